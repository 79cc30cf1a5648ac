r"""Reliability diagrams: top-label, class-wise (a grid) and by segmentation region.

Part of :mod:`calibrant.plot` (see there for what a diagram draws). Every function takes
:class:`calibrant.metrics.ReliabilityCurve` records, so plotting never touches logits, except
:func:`region_reliability_curves`, which computes the inner and boundary curves of a
segmentation. matplotlib is imported inside the functions (it is the optional ``plot`` extra).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from calibrant._checks import check_logits_target
from calibrant.metrics import calibration
from calibrant.metrics._curve import ReliabilityCurve
from calibrant.metrics.reliability import region_masks

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "REGIONS",
    "curve_ece",
    "region_masks",
    "region_reliability_curves",
    "region_reliability_diagram",
    "reliability_diagram",
    "reliability_grid",
]

REGIONS = ("inner", "boundary")


def _check_curve(curve: ReliabilityCurve) -> None:
    n = curve.count.numel()
    if curve.edges.numel() != n + 1 or curve.confidence.numel() != n or curve.accuracy.numel() != n:
        raise ValueError(
            "ReliabilityCurve needs edges (n_bins + 1,) and count/confidence/accuracy (n_bins,), "
            f"got {curve.edges.numel()}, {n}, {curve.confidence.numel()}, {curve.accuracy.numel()}"
        )


def curve_ece(curve: ReliabilityCurve) -> float:
    r"""ECE of a reliability curve, :math:`\sum_b \frac{n_b}{N}|\mathrm{acc}_b-\mathrm{conf}_b|`.

    Args:
        curve: per-bin statistics (empty bins are skipped).

    Returns:
        The ECE as a float (NaN when the curve is empty).

    Example:
        >>> from calibrant.metrics import ReliabilityCurve
        >>> c = ReliabilityCurve(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1, 3]),
        ...                      torch.tensor([0.4, 0.8]), torch.tensor([0.0, 1.0]))
        >>> round(curve_ece(c), 4)
        0.25
    """
    count = curve.count.double()
    total = float(count.sum())
    if total == 0:
        return math.nan
    gap = (curve.accuracy.double() - curve.confidence.double()).abs()
    return float(torch.where(count > 0, count * gap, torch.zeros_like(gap)).sum()) / total


def reliability_diagram(
    curve: ReliabilityCurve,
    ax: Axes | None = None,
    *,
    show_histogram: bool = True,
    title: str | None = None,
) -> Figure:
    """Draw one reliability diagram (accuracy bars, gap bars, diagonal) and a sample histogram.

    Args:
        curve: per-bin statistics.
        ax: axes to draw the diagram into; by default a new figure with the diagram on top and
            the histogram below. With an ``ax`` the histogram goes into an inset under it.
        show_histogram: draw the share of samples per bin.
        title: axes title.

    Returns:
        The figure holding the diagram.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> from calibrant.metrics import ReliabilityCurve
        >>> c = ReliabilityCurve(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1, 3]),
        ...                      torch.tensor([0.4, 0.8]), torch.tensor([0.0, 1.0]))
        >>> fig = reliability_diagram(c, show_histogram=False)
        >>> [round(float(b.get_height()), 2) for b in fig.axes[0].containers[0]]
        [0.0, 1.0]
    """
    import matplotlib.pyplot as plt

    _check_curve(curve)
    edges = curve.edges.double().cpu()
    left, width = edges[:-1], edges[1:] - edges[:-1]
    centre = (left + width / 2).tolist()
    count = curve.count.cpu()
    nonempty = count > 0
    acc = torch.where(nonempty, curve.accuracy.double().cpu(), torch.zeros(()))
    conf = torch.where(nonempty, curve.confidence.double().cpu(), torch.zeros(()))

    if ax is None:
        if show_histogram:
            fig, (ax, hax) = plt.subplots(
                2, 1, figsize=(4.2, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
            )
        else:
            fig, ax = plt.subplots(figsize=(4.2, 4.2))
            hax = None
    else:
        fig = ax.figure
        hax = ax.inset_axes([0.0, -0.45, 1.0, 0.28]) if show_histogram else None

    ax.bar(
        centre,
        acc.tolist(),
        width=width.tolist(),
        color="#4c72b0",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    low = torch.minimum(acc, conf)
    gap = torch.where(nonempty, (acc - conf).abs(), torch.zeros(()))
    ax.bar(
        centre,
        gap.tolist(),
        bottom=low.tolist(),
        width=width.tolist(),
        color="#dd8452",
        alpha=0.5,
        hatch="//",
        edgecolor="#c44e52",
        linewidth=0.5,
        label="gap",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    ax.set_xlim(float(edges[0]), float(edges[-1]))
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_aspect("auto")
    ece = curve_ece(curve)
    ax.legend(loc="upper left", fontsize=8, title=f"ECE = {100 * ece:.2f}%", title_fontsize=8)
    if title:
        ax.set_title(title)
    if hax is not None:
        total = max(int(count.sum()), 1)
        hax.bar(
            centre,
            (count.double() / total).tolist(),
            width=width.tolist(),
            color="grey",
            edgecolor="black",
            linewidth=0.5,
            label="samples",
        )
        hax.set_ylabel("share")
        hax.set_xlabel("confidence")
        hax.set_xlim(float(edges[0]), float(edges[-1]))
    else:
        ax.set_xlabel("confidence")
    return fig


def reliability_grid(
    curves: dict[str, ReliabilityCurve],
    *,
    ncols: int = 4,
    show_histogram: bool = True,
) -> Figure:
    """One reliability diagram per entry of ``curves`` (per class, per method...), in a grid.

    Args:
        curves: ordered mapping title -> curve.
        ncols: panels per row.
        show_histogram: draw each panel's histogram (as an inset below it).

    Returns:
        The figure (one axes per curve; histograms are inset child axes of each).

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> from calibrant.metrics.calibration import reliability_curve
        >>> g = torch.Generator().manual_seed(0)
        >>> logits, target = torch.randn(64, 3, generator=g), torch.randint(3, (64,), generator=g)
        >>> curves = {f"{n} bins": reliability_curve(logits, target, n_bins=n) for n in (5, 10)}
        >>> fig = reliability_grid(curves, show_histogram=False)
        >>> [a.get_title() for a in fig.axes]
        ['5 bins', '10 bins']
    """
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("curves is empty")
    n = len(curves)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    height = 4.6 if show_histogram else 3.4
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, height * nrows), squeeze=False)
    flat = axes.reshape(-1)
    for ax, (name, curve) in zip(flat, curves.items(), strict=False):
        reliability_diagram(curve, ax, show_histogram=show_histogram, title=str(name))
    for ax in flat[n:]:
        fig.delaxes(ax)
    fig.subplots_adjust(hspace=0.75 if show_histogram else 0.35, wspace=0.35)
    return fig


def region_reliability_diagram(
    curves: dict[str, ReliabilityCurve],
    *,
    show_histogram: bool = True,
    titles: tuple[str, str] = REGIONS,
) -> Figure:
    """Side-by-side diagrams for the ``"inner"`` and ``"boundary"`` regions of a segmentation.

    Args:
        curves: ``{"inner": curve, "boundary": curve}`` (e.g. from
            :func:`region_reliability_curves`).
        show_histogram: draw the histograms.
        titles: the two panels' titles.

    Returns:
        The figure.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> curves = region_reliability_curves(logits, logits.argmax(1), n_bins=5)
        >>> fig = region_reliability_diagram(curves, show_histogram=False)
        >>> [a.get_title() for a in fig.axes]
        ['inner', 'boundary']
    """
    missing = [r for r in REGIONS if r not in curves]
    if missing:
        raise ValueError(f"region curves need keys {REGIONS}, missing {missing}")
    return reliability_grid(
        {t: curves[r] for t, r in zip(titles, REGIONS, strict=True)},
        ncols=2,
        show_histogram=show_histogram,
    )


def region_reliability_curves(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    n_bins: int = 15,
    kernel_size: int = 3,
    ignore_index: int | None = -100,
) -> dict[str, ReliabilityCurve]:
    """Top-label reliability curves of the inner and boundary pixels of a segmentation.

    Calls :func:`calibrant.metrics.calibration.reliability_curve` once per region with the
    masks of :func:`region_masks`.

    Args:
        logits: segmentation logits.
        target: integer labels.
        n_bins: equal-width bins.
        kernel_size: odd window size of the region test.
        ignore_index: label to skip.

    Shape:
        logits ``(B, C, *spatial)``, target ``(B, *spatial)``.

    Returns:
        ``{"inner": curve, "boundary": curve}``.
    """
    check_logits_target(logits, target)
    masks = region_masks(target, kernel_size=kernel_size, ignore_index=ignore_index)
    return {
        region: calibration.reliability_curve(
            logits, target, n_bins=n_bins, ignore_index=ignore_index, mask=mask
        )
        for region, mask in masks.items()
    }
