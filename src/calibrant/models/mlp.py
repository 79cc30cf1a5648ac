"""Multi-layer perceptron for feature data (MULAN features, flattened images).

Example:
    >>> from calibrant.registry import MODELS
    >>> net = MODELS.build("mlp", in_channels=294, num_classes=6, hidden=(64,), batchnorm=True)
    >>> net(torch.zeros(5, 294)).shape
    torch.Size([5, 6])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from calibrant._checks import check_choice, check_positive
from calibrant.registry import MODELS

__all__ = ["MLP", "mlp"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLP(nn.Module):
    """Linear -> [BatchNorm1d] -> activation -> [Dropout] per hidden layer, then a linear head.

    Inputs with more than two dims are flattened from dim 1, so ``(B, 1, 28, 28)`` images work
    with ``in_features=784``. The output is logits: use softmax cross-entropy for multi-class and
    a sigmoid loss (BCE, SPA, ...) for multi-label targets.

    Args:
        in_features: input features (after flattening).
        num_classes: output logits.
        hidden: widths of the hidden layers (empty for a linear model).
        dropout: dropout probability after each hidden activation (0 disables).
        batchnorm: batch norm after each hidden linear layer (its bias is then dropped).
        activation: ``"relu"``, ``"gelu"``, ``"tanh"`` or ``"silu"``.

    Shape:
        - Input: ``(B, in_features)`` or ``(B, *)`` with ``prod(*) == in_features``.
        - Output: ``(B, num_classes)``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        batchnorm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_positive("in_features", in_features)
        check_positive("num_classes", num_classes)
        check_choice("activation", activation, tuple(_ACTIVATIONS))
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        c = in_features
        for h in hidden:
            check_positive("hidden width", h)
            layers.append(nn.Linear(c, h, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c = h
        layers.append(nn.Linear(c, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        if not torch.is_floating_point(x):
            raise ValueError(f"input must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"input must have shape (B, features), got {tuple(x.shape)}")
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"input has {x.shape[1]} features but the model expects {self.in_features}"
            )
        return self.layers(x)


@MODELS.register("mlp", task="classification", input="features", spatial_dims=0)
def mlp(in_channels: int = 784, num_classes: int = 10, **kwargs) -> MLP:
    """MLP over ``in_channels`` input features (default 784, a flattened 28x28 image).

    Keyword arguments go to :class:`MLP` (``hidden``, ``dropout``, ``batchnorm``, ``activation``).

    Example:
        >>> mlp(in_channels=103, num_classes=14, hidden=(32, 32))(torch.zeros(3, 103)).shape
        torch.Size([3, 14])
    """
    return MLP(in_channels, num_classes, **kwargs)
