"""hubclf: turn an image folder into a published, reusable timm classifier.

Importing hubclf registers its models in timm's registry::

    import hubclf, timm
    model = timm.create_model("hubclf_alexnet", pretrained=True, num_classes=8, img_size=(448, 224))
"""

from hubclf import (
    models,  # noqa: F401  (registers hubclf_* architectures with timm)
    train,  # a callable package: hubclf.train(TrainConfig(...))
)
from hubclf._version import __version__
from hubclf.hub import from_pretrained, push_to_hub, save_pretrained
from hubclf.models import freeze, param_counts, unfreeze
from hubclf.train import TrainConfig

__all__ = [
    "freeze",
    "unfreeze",
    "param_counts",
    "save_pretrained",
    "push_to_hub",
    "from_pretrained",
    "train",
    "TrainConfig",
    "__version__",
]
