"""hubclf convert: torchvision .pth -> model.safetensors in hubclf's layout, refusing anything but tensors."""

from __future__ import annotations

import os
import pickle

import pytest
import timm
import torch
from safetensors.torch import load_file

from hubclf.cli import main
from hubclf.convert import convert_torchvision_checkpoint


@pytest.mark.parametrize("arch,name", [("alexnet", "hubclf_alexnet"), ("vgg11_bn", "hubclf_vgg11_bn")])
def test_round_trip(torchvision_checkpoint, tmp_path, arch, name):
    path, reference = torchvision_checkpoint(arch)
    out = convert_torchvision_checkpoint(path, tmp_path / "converted")
    assert out == tmp_path / "converted" / "model.safetensors"
    keys = set(load_file(out))
    assert "head.fc.weight" in keys and not any(k.startswith("classifier.") for k in keys)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5


def test_cli(torchvision_checkpoint, tmp_path, capsys):
    path, _ = torchvision_checkpoint("alexnet")
    assert main(["convert", str(path), str(tmp_path / "a.safetensors")]) == 0
    assert "a.safetensors" in capsys.readouterr().out
    assert (tmp_path / "a.safetensors").is_file()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"features.0.weight": _Exploit()}, protocol=2))
    with pytest.raises(ValueError, match="not a plain tensor state dict"):
        convert_torchvision_checkpoint(evil, tmp_path / "out")
    assert not (tmp_path / "pwned").exists()
    assert main(["convert", str(evil), str(tmp_path / "out")]) == 2


def test_non_tensor_entries_and_unknown_layouts_are_refused(tmp_path):
    odd = tmp_path / "odd.pth"
    torch.save({"features.0.weight": torch.zeros(1), "epoch": 3}, odd)
    with pytest.raises(ValueError, match="non-tensor entries.*epoch"):
        convert_torchvision_checkpoint(odd, tmp_path / "out")
    torch.save({"layer.weight": torch.zeros(1)}, odd)
    with pytest.raises(ValueError, match="could not recognise"):
        convert_torchvision_checkpoint(odd, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert_torchvision_checkpoint(tmp_path / "missing.pth", tmp_path / "out")
