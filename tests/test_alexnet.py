"""hubclf_alexnet against torchvision's AlexNet: same logits from the same weights, new heads, any input size."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
import timm
import torch

import hubclf  # noqa: F401


def _load(name: str, path, **kwargs) -> torch.nn.Module:
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()


def test_logits_match_torchvision(torchvision_checkpoint):
    path, reference = torchvision_checkpoint("alexnet")
    model = _load("hubclf_alexnet", path)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5


def test_new_head_keeps_every_backbone_tensor(torchvision_checkpoint):
    path, reference = torchvision_checkpoint("alexnet")
    model = _load("hubclf_alexnet", path, num_classes=8)
    assert model.get_classifier().out_features == 8
    ours = model.state_dict()
    renames = {"classifier.1": "head.fc1", "classifier.4": "head.fc2"}
    compared = 0
    for key, value in reference.state_dict().items():
        if key.startswith("classifier.6."):
            continue
        prefix = ".".join(key.split(".")[:2])
        key = renames.get(prefix, prefix) + key[len(prefix) :]
        assert torch.equal(ours[key], value), key
        compared += 1
    assert compared == len(ours) - 2  # everything but the new head.fc weight and bias


def test_seed_case_448x224_eight_classes():
    model = timm.create_model("hubclf_alexnet", num_classes=8, img_size=(448, 224)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 448, 224)).shape == (2, 8)
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == (3, 448, 224)


def test_smallest_input_is_63():
    model = timm.create_model("hubclf_alexnet_slim", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 63, 63)).shape == (1, 3)
    with pytest.raises(ValueError, match="minimum 63×63"):
        model(torch.randn(1, 3, 62, 63))


def test_pretrained_url_downloads_through_torch_hub(torchvision_checkpoint, tmp_path, monkeypatch):
    """The real download path (torch.hub's load_state_dict_from_url), served from 127.0.0.1 instead of
    download.pytorch.org, with the same file name as torchvision's release."""
    path, reference = torchvision_checkpoint("alexnet")
    served = tmp_path / "models"
    served.mkdir()
    (served / "alexnet-owt-7be5be79.pth").write_bytes(path.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    try:
        url = f"http://127.0.0.1:{server.server_port}/alexnet-owt-7be5be79.pth"
        assert timm.models.get_pretrained_cfg("hubclf_alexnet").url.endswith("/alexnet-owt-7be5be79.pth")
        model = timm.create_model("hubclf_alexnet", pretrained=True, pretrained_cfg_overlay=dict(url=url)).eval()
    finally:
        server.shutdown()
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()
