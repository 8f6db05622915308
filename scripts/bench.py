"""Side-by-side cost of the three ways to train on a pretrained backbone, measured in one run, as ratios.

For each model at the seed's 448×224, through hubclf's own training code path (``apply_stage`` + ``batch_logits``):

- full fine-tuning: forward + backward through everything;
- frozen backbone: the backbone under ``torch.no_grad()``, backward through the classifier only;
- cached features: the classifier alone, on features computed once.

Reported: images per second of one training step (forward, backward, optimizer step) and the activations autograd
keeps for backward (weights not counted): the memory that feature extraction does without.

    python scripts/bench.py                                   # AlexNet + VGG11, CPU, small batches
    python scripts/bench.py --models hubclf_vgg11 --batch-size 32 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from accelerate import Accelerator

import hubclf  # noqa: F401  (registers the models)
from hubclf.train import TrainConfig
from hubclf.train.features import backbone_features
from hubclf.train.loop import batch_logits
from hubclf.train.stages import FULL, HEAD, apply_stage

MODES = ("full fine-tune", "frozen backbone", "cached features")


def measure(model: torch.nn.Module, mode: str, images: torch.Tensor, labels: torch.Tensor, steps: int,
            accelerator: Accelerator) -> tuple[float, int]:
    """(images/s, bytes saved for backward in one step) of ``steps`` training steps in ``mode``."""
    stage = FULL if mode == "full fine-tune" else HEAD
    trainable = apply_stage(model, stage, TrainConfig(model="x", data="x", output_dir="x", freeze="backbone"))
    optimizer = torch.optim.SGD([p for p in trainable.parameters() if p.requires_grad], lr=1e-3)
    if mode == "cached features":
        with torch.no_grad():
            batch = {"features": backbone_features(model, images)}  # computed once, outside the timing
    else:
        batch = {"pixel_values": images}

    saved = 0
    weights = {p.data_ptr() for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if tensor.data_ptr() not in weights:  # weights exist anyway: count the activations kept for backward
            saved += tensor.numel() * tensor.element_size()
        return tensor

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(batch_logits(accelerator, model, trainable, stage, batch), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()  # warm-up, and the one step whose saved tensors are counted
    _sync(images.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(images.device)
    return steps * len(images) / (time.perf_counter() - start), saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["hubclf_alexnet", "hubclf_vgg11"])
    parser.add_argument("--img-size", nargs=2, type=int, default=(448, 224), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    accelerator = Accelerator(cpu=args.device == "cpu")
    device = torch.device(args.device)
    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} timed steps, input {args.img_size[0]}×{args.img_size[1]}")
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=8, img_size=tuple(args.img_size)).to(device)
        images = torch.randn(args.batch_size, 3, *args.img_size, device=device)
        labels = torch.arange(args.batch_size, device=device) % 8
        results = {mode: measure(model, mode, images, labels, args.steps, accelerator) for mode in MODES}
        base_speed, base_saved = results["full fine-tune"]
        print(f"\n{name}")
        print(f"  {'mode':<17} {'img/s':>9} {'speed vs full':>14} {'kept for backward':>20} {'memory vs full':>15}")
        for mode, (speed, saved) in results.items():
            print(f"  {mode:<17} {speed:>9.1f} {speed / base_speed:>13.1f}x {saved / 2**20:>16.2f} MiB "
                  f"{saved / base_saved:>14.4f}x")


if __name__ == "__main__":
    main()
