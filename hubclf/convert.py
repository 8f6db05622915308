"""Convert a torchvision ``.pth`` state dict into ``model.safetensors`` in hubclf's key layout.

    from hubclf.convert import convert_torchvision_checkpoint
    convert_torchvision_checkpoint("alexnet-owt-7be5be79.pth", "weights/")   # -> weights/model.safetensors

The ``.pth`` is read with ``torch.load(weights_only=True)``: a pickle that holds anything but tensors is
refused, never executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch

from hubclf.atomic import atomic_write_file
from hubclf.models import alexnet, vgg
from hubclf.tensor_file import write_safetensors

WEIGHTS_NAME = "model.safetensors"

# Architecture detection from torchvision's key layout: (required key, architecture), most specific first.
_SIGNATURES = (
    ("features.1.running_mean", "hubclf_vgg11_bn"),
    ("features.18.weight", "hubclf_vgg11"),
    ("classifier.1.weight", "hubclf_alexnet"),
)


def load_torchvision_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely: tensors only, ``weights_only=True``, clear errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(
            f"{path} is not a plain tensor state dict (torch.load with weights_only=True refused it); "
            f"hubclf never unpickles arbitrary objects. Details: {str(e).splitlines()[0]}"
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    non_tensors = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if non_tensors:
        raise ValueError(f"{path} holds non-tensor entries {non_tensors[:5]}; expected a state dict of tensors")
    return obj


def detect_architecture(state_dict: dict[str, torch.Tensor]) -> str:
    """Name the hubclf architecture whose torchvision layout matches ``state_dict``'s keys."""
    for key, name in _SIGNATURES:
        if key in state_dict:
            return name
    raise ValueError("could not recognise the checkpoint as torchvision AlexNet, VGG11 or VGG11-BN; pass model_name")


def convert_torchvision_checkpoint(src: str | Path, dst: str | Path, model_name: str | None = None) -> Path:
    """Write ``src`` (torchvision state dict) as safetensors with hubclf keys; ``dst`` may be a directory.

    The result is checked by loading it strictly into the architecture, so a converted file always loads.
    """
    state_dict = load_torchvision_state_dict(src)
    model_name = model_name or detect_architecture(state_dict)
    num_classes = state_dict["classifier.6.weight"].shape[0] if "classifier.6.weight" in state_dict else 0
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    if getattr(model, "head_type", None) != "classic":
        raise ValueError(
            f"{model_name} is not a classic-head hubclf architecture; convert to its classic twin "
            "(slim variants load that file's conv weights through pretrained_cfg_overlay=dict(file=...))"
        )
    filter_fn = alexnet.checkpoint_filter_fn if isinstance(model, alexnet.AlexNet) else vgg.checkpoint_filter_fn
    model.load_state_dict(filter_fn(state_dict, model), strict=True)

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        dst = dst / WEIGHTS_NAME
    # Atomic: an interrupted conversion never leaves a truncated model.safetensors behind.
    return atomic_write_file(dst, lambda tmp: write_safetensors(tmp, model.state_dict(), {"format": "pt"}))
