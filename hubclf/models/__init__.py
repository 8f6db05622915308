"""hubclf's timm architectures. Importing this package registers them with timm's model registry."""

from hubclf.models.alexnet import AlexNet
from hubclf.models.transfer import freeze, param_counts, unfreeze
from hubclf.models.vgg import VGG

__all__ = ["AlexNet", "VGG", "freeze", "unfreeze", "param_counts"]
