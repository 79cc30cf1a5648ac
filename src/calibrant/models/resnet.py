"""CIFAR-style ResNet-20/32/56 (He et al. 2016, §4.2) with option A or B shortcuts.

The network is a 3x3 stem with 16 channels, three stages of ``n = (depth - 2) / 6`` basic blocks
with 16, 32 and 64 channels (the second and third stages start with stride 2), global average
pooling and a linear classifier. The default shortcut is **option A** of the paper (parameter
free: the identity, sub-sampled by 2 and zero-padded in channels where the shape changes), which
gives the published sizes (0.27 M / 0.46 M / 0.85 M parameters for 10 classes). Option B uses a
1x1 convolution + batch norm projection where the shape changes (identity elsewhere).

Example:
    >>> from calibrant.registry import MODELS
    >>> net = MODELS.build("resnet20", in_channels=3, num_classes=10)
    >>> sum(p.numel() for p in net.parameters())
    269722
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from calibrant._checks import check_choice, check_positive
from calibrant.models._layers import check_image_input
from calibrant.registry import MODELS

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet56"]


class _ShortcutA(nn.Module):
    """Parameter-free shortcut: stride-``s`` sub-sampling and zero channel padding."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sub-sample, then pad channels equally on both sides with zeros."""
        x = x[:, :, :: self.stride, :: self.stride]
        lo = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.extra - lo))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection and ReLU after the sum.

    Args:
        c_in: input channels.
        c_out: output channels.
        stride: stride of the first convolution (1 or 2).
        shortcut: ``"A"`` (parameter-free) or ``"B"`` (1x1 conv + BN) where the shape changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "A":
                self.shortcut = _ShortcutA(c_in, c_out, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n + 2) for 32x32 images; outputs logits ``(B, num_classes)``.

    Args:
        depth: ``6n + 2`` (20, 32, 44, 56, 110, ...).
        in_channels: image channels (3 for CIFAR, 1 for Fashion-MNIST).
        num_classes: logit channels.
        shortcut: ``"A"`` (default, the paper's CIFAR choice) or ``"B"``.
        width: channels of the first stage (16 in the paper); stages use ``width * (1, 2, 4)``.

    Shape:
        - Input: ``(B, in_channels, H, W)``, any ``H, W >= 1`` (global pooling at the end).
        - Output: ``(B, num_classes)``.

    Reference:
        He, Zhang, Ren and Sun, "Deep residual learning for image recognition", CVPR 2016, §4.2.
    """

    def __init__(
        self,
        depth: int = 20,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        shortcut: str = "A",
        width: int = 16,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 56, ...), got {depth}")
        check_choice("shortcut", shortcut, ("A", "B"))
        check_positive("in_channels", in_channels)
        check_positive("num_classes", num_classes)
        check_positive("width", width)
        n = (depth - 2) // 6
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages = []
        c_in = width
        for i, c in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(c_in, c, stride, shortcut))
                c_in = c
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        check_image_input(x, self.in_channels, 2)
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _register(depth: int):
    name = f"resnet{depth}"

    @MODELS.register(name, task="classification", input="image", spatial_dims=2)
    def factory(in_channels: int = 3, num_classes: int = 10, **kwargs) -> CifarResNet:
        return CifarResNet(depth, in_channels, num_classes, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"CIFAR ResNet-{depth} (option-A shortcuts by default); kwargs go to :class:`CifarResNet`."
    )
    return factory


resnet8 = _register(8)  # one block per stage: the CPU-scale CIFAR model of the bench
resnet20 = _register(20)
resnet32 = _register(32)
resnet56 = _register(56)
