r"""Slot layouts: which multiplier each violation entry ``(pixel i, class k)`` uses.

==================  ============  ===========================  =======================
layout              slots shape   slot of entry (i, k)         used by
==================  ============  ===========================  =======================
``"global"``        ``(1,)``      0                            NACL, ``crac_global``
``"class"``         ``(K,)``      k                            CALS, ``crac_class``
``"region"``        ``(2,)``      r(i)                         ``crac_region``
``"region_class"``  ``(2, K)``    ``[r(i), k]``                CRaC
==================  ============  ===========================  =======================

Regions are stored ``[region, class]`` with region 0 = inner (one label in the window) and
region 1 = boundary (two or more labels); the research code orders ``[outer, inner]``
(METHODS.md B4).

Each slot stands for ``columns_per_slot`` columns of the research code's per-pixel constraint
matrix (``K`` for one global or per-region multiplier, 1 otherwise), so that the penalty mean runs
over ``N · num_slots · columns_per_slot`` entries exactly like the code (``N · 2K`` for CRaC,
whose entries from the other region are 0).

A layout is an object (the way Cooper makes multipliers objects): each of the four classes
answers every question about its slots, so no caller compares layout names. The name is looked
up once, by :func:`make_layout`.

Example:
    >>> import torch
    >>> layout = make_layout("region_class", 2)
    >>> layout.shape, layout.num_slots, layout.columns_per_slot
    ((2, 2), 4, 1)
    >>> region = torch.tensor([[False, True]])  # pixel 1 is boundary
    >>> lam = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> layout.expand(lam, region, 3)[0, :, 1].tolist()  # boundary λ of each class
    [3.0, 4.0]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

from calibrant._checks import check_choice

__all__ = [
    "LAYOUTS",
    "ClassLayout",
    "GlobalLayout",
    "Layout",
    "RegionClassLayout",
    "RegionLayout",
    "make_layout",
]

_REGIONS = ("inner", "boundary")


def _view_classes(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(K,)`` -> ``(1, K, 1, ...)`` with ``ndim`` dims in total."""
    return values.reshape(1, -1, *([1] * (ndim - 2)))


class Layout(ABC):
    """The multiplier slots of an ALM term over ``K`` classes (see the module table).

    Args:
        num_classes: number of classes ``K`` (>= 1).
    """

    name: ClassVar[str]
    #: Whether the slots split pixels into regions (inner, boundary).
    needs_region: ClassVar[bool] = False
    #: Whether each class has its own slot; else one slot spans a pixel's ``K`` columns.
    per_class: ClassVar[bool] = False

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.num_classes == self.num_classes

    def __hash__(self) -> int:
        return hash((self.name, self.num_classes))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_classes})"

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the λ and ρ buffers: 2 regions if split, then K classes if per class, else 1."""
        dims = (2,) * self.needs_region + (self.num_classes,) * self.per_class
        return dims or (1,)

    @property
    def num_slots(self) -> int:
        """Number of multipliers."""
        return int(torch.Size(self.shape).numel())

    @property
    def columns_per_slot(self) -> int:
        """Per-pixel constraint columns that share one slot (``K`` or 1)."""
        return 1 if self.per_class else self.num_classes

    @abstractmethod
    def slot_names(self, class_names: Sequence[str] | None = None, sep: str = "/") -> list[str]:
        """One readable name per slot, in the (row-major) order of :attr:`shape`.

        Regions are ``inner`` and ``boundary``; classes take ``class_names`` when given (else
        ``class <k>``); the global slot is ``all``. Loggers and figures use these names.

        Example:
            >>> make_layout("region_class", 2).slot_names(["background", "LV"])
            ['inner/background', 'inner/LV', 'boundary/background', 'boundary/LV']
            >>> make_layout("class", 2).slot_names(), make_layout("global", 3).slot_names()
            (['class 0', 'class 1'], ['all'])
        """

    def _classes(self, class_names: Sequence[str] | None) -> list[str]:
        k = self.num_classes
        if class_names is None or len(class_names) != k:
            return [f"class {i}" for i in range(k)]
        return [str(c) for c in class_names]

    @abstractmethod
    def expand(self, values: torch.Tensor, region: torch.Tensor | None, ndim: int) -> torch.Tensor:
        """Per-slot values (λ or ρ, shaped :attr:`shape`) broadcastable against ``h``.

        Args:
            values: a :attr:`shape` tensor.
            region: bool ``(B, *spatial)`` (True = boundary) for region layouts, else ignored.
            ndim: ``h.dim()`` (``h`` is ``(B, K, *spatial)``).
        """

    @abstractmethod
    def sums(self, x: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
        """Float64 sums by slot of per-entry values ``x`` ``(B, K, *spatial)`` (zero if masked)."""

    @abstractmethod
    def counts(self, mask: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
        """Int64 number of valid entries per slot, from the bool ``(B, *spatial)`` pixel mask."""

    @abstractmethod
    def pair_table(self, values: torch.Tensor) -> torch.Tensor:
        """Per-slot values as a float32 ``(2, K)`` ``[region, class]`` table."""

    @abstractmethod
    def from_pairs(self, table: torch.Tensor) -> torch.Tensor:
        """Slot sums (:attr:`shape`) from per-``[region, class]`` sums ``(2, K)``."""

    @abstractmethod
    def pair_counts(self, pixels: torch.Tensor) -> torch.Tensor:
        """Entries per slot from the int64 ``[inner, boundary]`` pixel counts."""


class GlobalLayout(Layout):
    """One multiplier for every entry (NACL, ``crac_global``)."""

    name = "global"

    def slot_names(self, class_names=None, sep="/") -> list[str]:  # noqa: D102
        return ["all"]

    def expand(self, values, region, ndim) -> torch.Tensor:  # noqa: D102
        return values.reshape([1] * ndim)

    def sums(self, x, region) -> torch.Tensor:  # noqa: D102
        return x.double().sum().reshape(1)

    def counts(self, mask, region) -> torch.Tensor:  # noqa: D102
        return (mask.sum() * self.num_classes).reshape(1)

    def pair_table(self, values) -> torch.Tensor:  # noqa: D102
        return values.reshape(1, 1).expand(2, self.num_classes).float()

    def from_pairs(self, table) -> torch.Tensor:  # noqa: D102
        return table.sum().reshape(1)

    def pair_counts(self, pixels) -> torch.Tensor:  # noqa: D102
        return (pixels.sum() * self.num_classes).reshape(1)


class ClassLayout(Layout):
    """One multiplier per class (CALS, ``crac_class``)."""

    name = "class"
    per_class = True

    def slot_names(self, class_names=None, sep="/") -> list[str]:  # noqa: D102
        return self._classes(class_names)

    def expand(self, values, region, ndim) -> torch.Tensor:  # noqa: D102
        return _view_classes(values, ndim)

    def sums(self, x, region) -> torch.Tensor:  # noqa: D102
        return x.double().sum([0, *range(2, x.dim())])

    def counts(self, mask, region) -> torch.Tensor:  # noqa: D102
        return mask.sum().expand(self.num_classes).clone()

    def pair_table(self, values) -> torch.Tensor:  # noqa: D102
        return values.reshape(1, self.num_classes).expand(2, self.num_classes).float()

    def from_pairs(self, table) -> torch.Tensor:  # noqa: D102
        return table.sum(0)

    def pair_counts(self, pixels) -> torch.Tensor:  # noqa: D102
        return pixels.sum().expand(self.num_classes).clone()


class _RegionLayouts(Layout):
    """Shared region split of the two region layouts: ``[inner, boundary]`` sums by class."""

    needs_region = True

    @staticmethod
    def _split_sums(x: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        x = x.double()
        dims = [0, *range(2, x.dim())]
        r = region.unsqueeze(1)
        zero = x.new_zeros(())
        inner = torch.where(r, zero, x).sum(dims)
        outer = torch.where(r, x, zero).sum(dims)
        return torch.stack([inner, outer])

    @staticmethod
    def _split_counts(mask: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        n = mask.sum()
        n_outer = (mask & region).sum()
        return torch.stack([n - n_outer, n_outer])


class RegionLayout(_RegionLayouts):
    """One multiplier per region, inner and boundary (``crac_region``)."""

    name = "region"

    def slot_names(self, class_names=None, sep="/") -> list[str]:  # noqa: D102
        return list(_REGIONS)

    def expand(self, values, region, ndim) -> torch.Tensor:  # noqa: D102
        return torch.where(region.unsqueeze(1), values[1], values[0])

    def sums(self, x, region) -> torch.Tensor:  # noqa: D102
        return self._split_sums(x, region).sum(1)

    def counts(self, mask, region) -> torch.Tensor:  # noqa: D102
        return self._split_counts(mask, region) * self.num_classes

    def pair_table(self, values) -> torch.Tensor:  # noqa: D102
        return values.reshape(2, 1).expand(2, self.num_classes).float()

    def from_pairs(self, table) -> torch.Tensor:  # noqa: D102
        return table.sum(1)

    def pair_counts(self, pixels) -> torch.Tensor:  # noqa: D102
        return pixels * self.num_classes


class RegionClassLayout(_RegionLayouts):
    """One multiplier per region and class (CRaC)."""

    name = "region_class"
    per_class = True

    def slot_names(self, class_names=None, sep="/") -> list[str]:  # noqa: D102
        return [f"{r}{sep}{c}" for r in _REGIONS for c in self._classes(class_names)]

    def expand(self, values, region, ndim) -> torch.Tensor:  # noqa: D102
        r = region.unsqueeze(1)
        return torch.where(r, _view_classes(values[1], ndim), _view_classes(values[0], ndim))

    def sums(self, x, region) -> torch.Tensor:  # noqa: D102
        return self._split_sums(x, region)

    def counts(self, mask, region) -> torch.Tensor:  # noqa: D102
        pair = self._split_counts(mask, region)
        return pair.unsqueeze(1).expand(2, self.num_classes).clone()

    def pair_table(self, values) -> torch.Tensor:  # noqa: D102
        return values.reshape(2, self.num_classes).expand(2, self.num_classes).float()

    def from_pairs(self, table) -> torch.Tensor:  # noqa: D102
        return table

    def pair_counts(self, pixels) -> torch.Tensor:  # noqa: D102
        return pixels.unsqueeze(1).expand(2, self.num_classes).clone()


#: The layouts by name, for configurations and presets.
LAYOUTS: dict[str, type[Layout]] = {
    cls.name: cls for cls in (GlobalLayout, ClassLayout, RegionLayout, RegionClassLayout)
}


def make_layout(layout: str | Layout, num_classes: int) -> Layout:
    """The layout named ``layout`` over ``num_classes`` classes (a :class:`Layout` passes through).

    Raises:
        ValueError: for an unknown name, or a layout object built for another class count.
    """
    if isinstance(layout, Layout):
        if layout.num_classes != int(num_classes):
            raise ValueError(f"{layout!r} does not have num_classes={num_classes}")
        return layout
    check_choice("layout", layout, LAYOUTS)
    return LAYOUTS[layout](num_classes)
