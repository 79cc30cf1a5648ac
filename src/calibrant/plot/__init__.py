r"""Figures (matplotlib, PNG/SVG): reliability diagrams and training histories.

Two modules, re-exported here: :mod:`~calibrant.plot.reliability` draws reliability diagrams
from :class:`calibrant.metrics.ReliabilityCurve` records (bin ``edges``, int64 ``count``, mean
``confidence`` and ``accuracy`` per bin, NaN for empty bins), so plotting never touches logits;
:mod:`~calibrant.plot.history` draws a run's loss, validation metrics and ALM multipliers per
epoch. :func:`save_figure` writes either. matplotlib is imported inside the functions (it is the
optional ``plot`` extra).

A diagram draws, per non-empty bin :math:`b`, a bar of height :math:`\mathrm{acc}_b` (label
``"accuracy"``), a hatched "gap" bar spanning :math:`[\min(\mathrm{acc}_b,\mathrm{conf}_b),
\max(\cdot)]` (label ``"gap"``), the diagonal, and the curve's ECE
:math:`\sum_b \tfrac{n_b}{N}|\mathrm{acc}_b - \mathrm{conf}_b|` in the legend. The optional
histogram panel below shows the share of samples per bin (label ``"samples"``).

Example:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import torch
    >>> from calibrant.metrics import ReliabilityCurve
    >>> edges = torch.linspace(0, 1, 5, dtype=torch.float64)
    >>> nan = float("nan")
    >>> curve = ReliabilityCurve(edges, torch.tensor([0, 10, 30, 60]),
    ...     torch.tensor([nan, 0.4, 0.65, 0.9], dtype=torch.float64),
    ...     torch.tensor([nan, 0.3, 0.6, 0.95], dtype=torch.float64))
    >>> fig = reliability_diagram(curve, title="val")
    >>> len(fig.axes)
    2
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from calibrant.plot.history import alm_trajectories, class_label, training_curves
from calibrant.plot.reliability import (
    REGIONS,
    curve_ece,
    region_masks,
    region_reliability_curves,
    region_reliability_diagram,
    reliability_diagram,
    reliability_grid,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "REGIONS",
    "alm_trajectories",
    "class_label",
    "reliability_grid",
    "curve_ece",
    "region_masks",
    "region_reliability_curves",
    "region_reliability_diagram",
    "reliability_diagram",
    "save_figure",
    "training_curves",
]


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150, close: bool = True) -> Path:
    """Save ``fig`` as PNG or SVG (chosen by the suffix), creating parent folders.

    Args:
        fig: the figure.
        path: destination ending in ``.png`` or ``.svg``.
        dpi: resolution for PNG.
        close: release the figure from pyplot after saving (long runs draw many figures).

    Returns:
        The written path.

    Example:
        >>> import matplotlib, tempfile, pathlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig = plt.figure()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_figure(fig, pathlib.Path(d) / "sub" / "f.svg").stat().st_size > 0
        True
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ValueError(f"figure path must end in .png or .svg, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path
