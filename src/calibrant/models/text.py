"""Small models for 20 Newsgroups: an MLP over TF-IDF / bag-of-words vectors, and an EmbeddingBag.

``text_mlp`` takes document vectors ``(B, vocab_size)`` float (TF-IDF weights or counts), dense or
as a torch sparse COO/CSR tensor (the first layer then runs a sparse-dense product, so a 100 k-word
vocabulary needs no dense batch). ``text_bag`` takes token ids ``(B, L)`` int64 padded with
``padding_idx`` and averages learned word embeddings (fastText-style) before a linear head.

Example:
    >>> from calibrant.registry import MODELS
    >>> net = MODELS.build("text_mlp", in_channels=1000, num_classes=20, hidden=32).eval()
    >>> dense = torch.zeros(4, 1000)
    >>> dense[0, 3] = 0.5
    >>> torch.allclose(net(dense), net(dense.to_sparse()))
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from calibrant._checks import check_positive
from calibrant.registry import MODELS

__all__ = ["SparseLinear", "TextMLP", "TextEmbeddingBag", "text_mlp", "text_bag"]


class SparseLinear(nn.Linear):
    """``nn.Linear`` that also accepts a sparse (COO or CSR) 2D input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W^T + b`` for dense or sparse ``x`` of shape ``(B, in_features)``."""
        if x.layout == torch.strided:
            return super().forward(x)
        out = torch.sparse.mm(x, self.weight.t())
        return out + self.bias if self.bias is not None else out


class TextMLP(nn.Module):
    """Two-layer MLP over document vectors: Linear -> ReLU -> Dropout -> Linear.

    Args:
        vocab_size: length of the document vectors.
        num_classes: output logits (20 for 20 Newsgroups).
        hidden: hidden width.
        dropout: dropout probability after the hidden activation.

    Shape:
        - Input: ``(B, vocab_size)`` float, dense or sparse (COO/CSR).
        - Output: ``(B, num_classes)``.
    """

    def __init__(
        self, vocab_size: int, num_classes: int, *, hidden: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        check_positive("vocab_size", vocab_size)
        check_positive("num_classes", num_classes)
        check_positive("hidden", hidden)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.fc1 = SparseLinear(vocab_size, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        if not torch.is_floating_point(x):
            raise ValueError(f"input must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self.vocab_size:
            raise ValueError(
                f"input must have shape (B, vocab_size={self.vocab_size}), got {tuple(x.shape)}"
            )
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class TextEmbeddingBag(nn.Module):
    """Mean of word embeddings (padding ignored) followed by a linear head.

    Args:
        vocab_size: number of token ids, including the padding id.
        num_classes: output logits.
        embed_dim: embedding width.
        padding_idx: id that pads short documents; it contributes nothing to the mean.
        dropout: dropout probability on the document embedding.

    Shape:
        - Input: ``(B, L)`` int64 token ids in ``[0, vocab_size)``.
        - Output: ``(B, num_classes)``.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        embed_dim: int = 64,
        padding_idx: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive("vocab_size", vocab_size)
        check_positive("num_classes", num_classes)
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.bag = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=padding_idx)
        nn.init.normal_(self.bag.weight, std=1.0 / math.sqrt(embed_dim))
        with torch.no_grad():
            self.bag.weight[padding_idx].zero_()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        if tokens.dtype not in (torch.int64, torch.int32) or tokens.dim() != 2:
            raise ValueError(
                f"tokens must be an integer tensor (B, L), got {tokens.dtype} {tuple(tokens.shape)}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got "
                f"[{int(tokens.min())}, {int(tokens.max())}]"
            )
        return self.fc(self.dropout(self.bag(tokens)))


@MODELS.register("text_mlp", task="classification", input="bag_of_words", spatial_dims=0)
def text_mlp(in_channels: int = 10000, num_classes: int = 20, **kwargs) -> TextMLP:
    """:class:`TextMLP` over ``in_channels``-long TF-IDF/count vectors (default vocab 10 000).

    Example:
        >>> text_mlp(in_channels=50, num_classes=20)(torch.rand(2, 50)).shape
        torch.Size([2, 20])
    """
    return TextMLP(in_channels, num_classes, **kwargs)


@MODELS.register("text_bag", task="classification", input="token_ids", spatial_dims=0)
def text_bag(in_channels: int = 10000, num_classes: int = 20, **kwargs) -> TextEmbeddingBag:
    """:class:`TextEmbeddingBag` with a vocabulary of ``in_channels`` token ids (0 = padding).

    Example:
        >>> text_bag(in_channels=100)(torch.tensor([[5, 7, 0], [9, 0, 0]])).shape
        torch.Size([2, 20])
    """
    return TextEmbeddingBag(in_channels, num_classes, **kwargs)
