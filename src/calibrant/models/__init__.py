"""Model factories (UNet 2D/3D, DynUNet, CIFAR ResNet, MLP, text models), registered by name.

Every factory takes ``in_channels`` (image channels, feature count or vocabulary size) and
``num_classes`` and returns a module that outputs logits with classes on dim 1. Build by name with
``calibrant.registry.MODELS.build(name, in_channels=..., num_classes=...)``; each entry's metadata
says its ``task`` and ``input`` kind. MONAI is imported only when ``dynunet`` is built.

Example:
    >>> from calibrant.registry import MODELS
    >>> MODELS.names(task="segmentation")
    ['dynunet', 'unet2d', 'unet2d_paper', 'unet3d']
"""

from calibrant.models._layers import to_channels_last
from calibrant.models.dynunet import PaddedDynUNet, dynunet
from calibrant.models.mlp import MLP, mlp
from calibrant.models.resnet import BasicBlock, CifarResNet, resnet8, resnet20, resnet32, resnet56
from calibrant.models.text import TextEmbeddingBag, TextMLP, text_bag, text_mlp
from calibrant.models.unet import UNet, unet2d, unet2d_paper, unet3d

__all__ = [
    "MLP",
    "BasicBlock",
    "CifarResNet",
    "PaddedDynUNet",
    "TextEmbeddingBag",
    "TextMLP",
    "UNet",
    "dynunet",
    "mlp",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet56",
    "text_bag",
    "text_mlp",
    "to_channels_last",
    "unet2d",
    "unet2d_paper",
    "unet3d",
]
