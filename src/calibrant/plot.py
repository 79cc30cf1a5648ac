r"""Reliability diagrams (matplotlib, PNG/SVG): top-label, class-wise and by segmentation region.

Every function takes :class:`calibrant.metrics.ReliabilityCurve` records (bin ``edges``, int64
``count``, mean ``confidence`` and ``accuracy`` per bin, NaN for empty bins), so plotting never
touches logits. matplotlib is imported inside the functions (it is the optional ``plot`` extra).

A diagram draws, per non-empty bin :math:`b`, a bar of height :math:`\mathrm{acc}_b` (label
``"accuracy"``), a hatched "gap" bar spanning :math:`[\min(\mathrm{acc}_b,\mathrm{conf}_b),
\max(\cdot)]` (label ``"gap"``), the diagonal, and the curve's ECE
:math:`\sum_b \tfrac{n_b}{N}|\mathrm{acc}_b - \mathrm{conf}_b|` in the legend. The optional
histogram panel below shows the share of samples per bin (label ``"samples"``).

Example:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
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

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from calibrant._checks import check_logits_target
from calibrant.alm.constraints import Layout
from calibrant.metrics import calibration
from calibrant.metrics._curve import ReliabilityCurve
from calibrant.metrics.reliability import region_masks

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
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
        >>> from calibrant.metrics import ReliabilityCurve
        >>> c = ReliabilityCurve(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1, 3]),
        ...                      torch.tensor([0.4, 0.8]), torch.tensor([0.0, 1.0]))
        >>> fig = reliability_grid({"a": c, "b": c}, show_histogram=False)
        >>> [a.get_title() for a in fig.axes]
        ['a', 'b']
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


def training_curves(history: list[dict]) -> Figure:
    """Training loss terms and validation metrics per epoch, from ``engine.fit``'s history.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> hist = [{"epoch": e, "train": {"loss": 1 / e}, "val": {"dice": e / 4}} for e in (1, 2)]
        >>> [a.get_title() for a in training_curves(hist).axes]
        ['training loss', 'validation']
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [r["epoch"] for r in history]
    for key in sorted({k for r in history for k in r.get("train", {}) if k != "steps"}):
        ax_train.plot(epochs, [r["train"].get(key, math.nan) for r in history], label=key)
    for key in sorted({k for r in history for k, v in r.get("val", {}).items()}):
        values = [r["val"].get(key) for r in history]
        if all(isinstance(v, (int, float)) for v in values):
            ax_val.plot(epochs, values, marker="o", label=key)
    for ax, title, ylabel in (
        (ax_train, "training loss", "loss (epoch mean)"),
        (ax_val, "validation", "score"),
    ):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def class_label(k: int, class_names: list[str] | tuple[str, ...] | None = None) -> str:
    """Display name of class ``k``: the dataset's name (underscores as spaces), else ``class k``.

    Example:
        >>> class_label(1, ["background", "right_ventricle"]), class_label(3)
        ('right ventricle', 'class 3')
    """
    if class_names is not None and 0 <= k < len(class_names):
        return str(class_names[k]).replace("_", " ")
    return f"class {k}"


def _infer_slots(shape: tuple[int, ...], class_names) -> list[str]:
    """Slot names from the λ shape alone (metrics.json written before slot names were saved)."""
    k = len(class_names) if class_names else None
    if len(shape) == 2 and shape[0] == 2:
        return Layout("region_class", shape[1]).slot_names(class_names)
    n = int(torch.Size(shape).numel())
    if n == 1:
        return ["all"]
    if k == n:
        return Layout("class", n).slot_names(class_names)
    return [f"slot {j}" for j in range(n)]


def _slot_label(name: str) -> str:
    """``inner/right_ventricle`` -> ``inner / right ventricle`` (class names keep their ``/``)."""
    region, sep, rest = name.partition("/")
    if sep and region in REGIONS:
        name = f"{region} / {rest}"
    return name.replace("_", " ")


_KEYS = {"lambda": ("multipliers λ", "λ"), "rho": ("penalty coefficients ρ", "ρ")}


def _distinct(series: torch.Tensor, names: list[str]) -> list[tuple[str, list[int]]]:
    """Group the columns of ``series`` (epochs × slots) whose trajectories are identical."""
    groups: list[tuple[torch.Tensor, list[int]]] = []
    for j in range(series.shape[1]):
        for ref, members in groups:
            if torch.allclose(series[:, j], ref, rtol=1e-9, atol=0.0):
                members.append(j)
                break
        else:
            groups.append((series[:, j], [j]))
    out = []
    for _, members in groups:
        if len(members) == 1:
            label = names[members[0]]
        elif len(members) == series.shape[1]:
            label = f"all {len(members)} slots"
        elif len(members) <= 3:
            label = ", ".join(names[j] for j in members)
        else:
            label = f"{len(members)} slots ({names[members[0]]}, …)"
        out.append((label, members))
    return out


def _value_axis(ax: Axes, values: torch.Tensor) -> None:
    """Log scale when the positive values span more than two decades, else linear."""
    from matplotlib.ticker import LogFormatterSciNotation, ScalarFormatter

    finite = values[torch.isfinite(values)]
    positive = finite[finite > 0]
    if len(positive) == len(finite) and len(positive) and positive.max() / positive.min() > 100:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatterSciNotation())
    else:
        fmt = ScalarFormatter(useOffset=False)
        fmt.set_powerlimits((-3, 4))
        ax.yaxis.set_major_formatter(fmt)
        if len(finite) and float(finite.max() - finite.min()) == 0:  # a flat line: centre it
            v = float(finite[0])
            pad = abs(v) * 0.5 or 1.0
            ax.set_ylim(v - pad, v + pad)


def alm_trajectories(
    history: list[dict],
    *,
    slots: dict[str, dict] | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
) -> Figure | None:
    """λ and ρ of every multiplier slot per epoch; ``None`` without ALM terms.

    One row per ALM term: λ on the left, ρ on the right. Slots are named by region and class
    (``inner / right ventricle``: ``slots`` from ``metrics.json``, else inferred from the slot
    shape and ``class_names``); on the λ panel colour is the class and the line style the
    region (solid inner, dashed boundary). Slots whose trajectories are identical (ρ often is)
    share one line. An axis is logarithmic only when its values span more than two decades.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> rec = lambda e: {"epoch": e, "alm": {"alm0": {"lambda": [[e, 2 * e]], "rho": [[1, 1]]}}}
        >>> fig = alm_trajectories([rec(1), rec(2)])
        >>> [a.get_title() for a in fig.axes]
        ['multipliers λ', 'penalty coefficients ρ']
        >>> [line.get_label() for line in fig.axes[1].get_lines()]
        ['all 2 slots']
        >>> alm_trajectories([{"epoch": 1, "alm": {}}]) is None
        True
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    terms = sorted({t for r in history for t in r.get("alm", {})})
    if not terms:
        return None
    fig, axes = plt.subplots(len(terms), 2, figsize=(12, 3.8 * len(terms)), squeeze=False)
    records = [r for r in history if r.get("alm")]
    epochs = [r["epoch"] for r in records]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, term in zip(axes, terms, strict=True):
        info = (slots or {}).get(term, {})
        method = info.get("method")
        for ax, key in zip(row, ("lambda", "rho"), strict=True):
            values = [torch.as_tensor(r["alm"][term][key], dtype=torch.float64) for r in records]
            shape = tuple(values[0].shape)
            series = torch.stack(values).reshape(len(values), -1)
            names = info.get("slots") or _infer_slots(shape, class_names)
            if len(names) != series.shape[1]:
                names = [f"slot {j}" for j in range(series.shape[1])]
            names = [_slot_label(n) for n in names]
            classes = shape[-1] if len(shape) == 2 else series.shape[1]
            for label, members in _distinct(series, names):
                j = members[0]
                style = "--" if len(shape) == 2 and j >= classes else "-"
                colour = colours[(j % classes) % len(colours)] if len(members) == 1 else "black"
                ax.plot(
                    epochs,
                    series[:, j].tolist(),
                    marker=".",
                    linestyle=style,
                    color=colour,
                    label=label,
                )
            title, symbol = _KEYS[key]
            ax.set_title(f"{method} {title}" if method else title)
            ax.set_xlabel("epoch")
            ax.set_ylabel(symbol)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _value_axis(ax, series)
            ax.grid(True, alpha=0.3)
            if len(ax.get_lines()) <= 16:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
