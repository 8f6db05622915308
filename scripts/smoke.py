"""A one-minute smoke run of the seed question: AlexNet for 8 classes on 3×448×224 images, both transfer modes.

Offline: the "ImageNet" weights are a randomly initialised torchvision AlexNet saved to a temp file, loaded through
exactly the path real weights take (``pretrained=True`` + ``pretrained_cfg_overlay``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import timm
import torch
import torchvision

import hubclf


def main() -> None:
    torch.manual_seed(0)
    weights = Path(tempfile.mkdtemp()) / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet().state_dict(), weights)

    model = timm.create_model(
        "hubclf_alexnet", pretrained=True, num_classes=8, img_size=(448, 224), pretrained_cfg_overlay=dict(file=weights)
    )
    config = timm.data.resolve_data_config({}, model=model)
    print(f"data config: {config}")
    images, labels = torch.randn(8, *config["input_size"]), torch.arange(8)

    for mode in ("fine-tune", "feature extraction"):
        hubclf.unfreeze(model) if mode == "fine-tune" else hubclf.freeze(model)
        trainable, total = hubclf.param_counts(model)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        model.train()
        start = time.perf_counter()
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        rate = 3 * len(images) / (time.perf_counter() - start)
        print(f"{mode:>18}: {trainable:>10,} / {total:,} params trainable, loss {loss.item():.3f}, {rate:.1f} img/s")
    print(f"output shape for a (2, 3, 448, 224) batch: {tuple(model.eval()(images[:2]).shape)}")


if __name__ == "__main__":
    main()
