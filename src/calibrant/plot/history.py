"""Training history plots: loss terms and validation metrics per epoch, and ALM trajectories.

Part of :mod:`calibrant.plot`. Both functions read the ``history`` that
:func:`calibrant.engine.fit` returns (and ``metrics.json`` stores). matplotlib is imported inside
the functions (it is the optional ``plot`` extra).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from calibrant.alm.layouts import make_layout
from calibrant.plot.reliability import REGIONS

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["alm_trajectories", "class_label", "training_curves"]


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
        return make_layout("region_class", shape[1]).slot_names(class_names)
    n = int(torch.Size(shape).numel())
    if n == 1:
        return ["all"]
    if k == n:
        return make_layout("class", n).slot_names(class_names)
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
