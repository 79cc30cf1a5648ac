"""Reliability diagrams: artist data, files written, and the region split."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from calibrant import plot  # noqa: E402
from calibrant.metrics import ReliabilityCurve  # noqa: E402

NAN = float("nan")


def _curve():
    edges = torch.linspace(0, 1, 6, dtype=torch.float64)
    count = torch.tensor([0, 5, 20, 30, 45])
    conf = torch.tensor([NAN, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    acc = torch.tensor([NAN, 0.2, 0.55, 0.6, 0.95], dtype=torch.float64)
    return ReliabilityCurve(edges, count, conf, acc)


def _by_label(ax, label):
    return next(c for c in ax.containers if c.get_label() == label)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_reliability_diagram_artists(tmp_path):
    c = _curve()
    fig = plot.reliability_diagram(c, title="top-label")
    ax, hax = fig.axes
    assert ax.get_title() == "top-label"
    acc = _by_label(ax, "accuracy")
    heights = [b.get_height() for b in acc]
    assert heights == pytest.approx([0.0, 0.2, 0.55, 0.6, 0.95])
    centres = [b.get_x() + b.get_width() / 2 for b in acc]
    assert centres == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert [b.get_width() for b in acc] == pytest.approx([0.2] * 5)
    gap = _by_label(ax, "gap")
    assert [b.get_height() for b in gap] == pytest.approx([0.0, 0.1, 0.05, 0.1, 0.05])
    assert [b.get_y() for b in gap] == pytest.approx([0.0, 0.2, 0.5, 0.6, 0.9])
    hist = _by_label(hax, "samples")
    assert [b.get_height() for b in hist] == pytest.approx([0, 0.05, 0.2, 0.3, 0.45])
    # Diagonal and ECE in the legend title.
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [0, 1] and list(ys) == [0, 1]
    ece = (5 * 0.1 + 20 * 0.05 + 30 * 0.1 + 45 * 0.05) / 100
    assert plot.curve_ece(c) == pytest.approx(ece)
    assert f"{100 * ece:.2f}%" in ax.get_legend().get_title().get_text()
    png = plot.save_figure(fig, tmp_path / "rd.png")
    svg = plot.save_figure(fig, tmp_path / "nested" / "rd.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:500]


def test_into_given_axes_and_no_histogram():
    fig, ax = plt.subplots()
    out = plot.reliability_diagram(_curve(), ax, show_histogram=True)
    assert out is fig and len(ax.child_axes) == 1  # diagram + inset histogram
    assert [b.get_label() for b in ax.child_axes[0].containers] == ["samples"]
    fig2 = plot.reliability_diagram(_curve(), show_histogram=False)
    assert len(fig2.axes) == 1


def test_classwise_and_region_diagrams(tmp_path):
    curves = {f"class {k}": _curve() for k in range(5)}
    fig = plot.reliability_grid(curves, ncols=3, show_histogram=False)
    assert [a.get_title() for a in fig.axes] == list(curves)  # unused 6th panel removed
    fig = plot.reliability_grid(curves, ncols=3)
    assert len(fig.axes) == 5 and all(len(a.child_axes) == 1 for a in fig.axes)
    fig = plot.region_reliability_diagram({"boundary": _curve(), "inner": _curve()})
    titles = [a.get_title() for a in fig.axes]
    assert titles == ["inner", "boundary"]
    plot.save_figure(fig, tmp_path / "regions.png")
    with pytest.raises(ValueError, match="missing"):
        plot.region_reliability_diagram({"inner": _curve()})


def test_bad_inputs(tmp_path):
    fig = plot.reliability_diagram(_curve())
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        plot.save_figure(fig, tmp_path / "x.pdf")
    c = _curve()
    with pytest.raises(ValueError, match="edges"):
        plot.reliability_diagram(ReliabilityCurve(c.edges[:-1], c.count, c.confidence, c.accuracy))
    with pytest.raises(ValueError, match="empty"):
        plot.reliability_grid({})
    empty = ReliabilityCurve(
        c.edges, torch.zeros(5, dtype=torch.long), c.confidence * NAN, c.accuracy * NAN
    )
    assert math.isnan(plot.curve_ece(empty))
    plot.reliability_diagram(empty)  # draws an empty diagram without error


def ref_region_masks(target, k=3, ignore_index=-100):
    """Loop reference: a valid pixel is boundary iff its window (out-of-image = label 0,
    ignored neighbours skipped) holds two distinct labels."""
    b, h, w = target.shape
    r = k // 2
    inner = torch.zeros_like(target, dtype=torch.bool)
    bnd = torch.zeros_like(inner)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                if target[n, i, j] == ignore_index:
                    continue
                labels = set()
                for di in range(-r, r + 1):
                    for dj in range(-r, r + 1):
                        ii, jj = i + di, j + dj
                        if 0 <= ii < h and 0 <= jj < w:
                            v = int(target[n, ii, jj])
                            if v != ignore_index:
                                labels.add(v)
                        else:
                            labels.add(0)
                (bnd if len(labels) > 1 else inner)[n, i, j] = True
    return inner, bnd


@pytest.mark.parametrize("k", [3, 5])
def test_region_masks_reference(generator, k):
    y = torch.zeros(2, 12, 12, dtype=torch.long)
    y[:, 3:9, 2:10] = 1
    y[1, 5:7, 5:7] = 2
    y[0, 0, :4] = -100
    y = torch.where(torch.rand(y.shape, generator=generator) < 0.05, torch.full_like(y, -100), y)
    masks = plot.region_masks(y, kernel_size=k)
    inner, bnd = ref_region_masks(y, k)
    assert torch.equal(masks["inner"], inner)
    assert torch.equal(masks["boundary"], bnd)
    assert not bool((masks["inner"] & masks["boundary"]).any())
    assert torch.equal(masks["inner"] | masks["boundary"], y != -100)


def test_region_reliability_curves_calls_calibration(monkeypatch, generator):
    """The region curves are the calibration module's curves under each region mask."""
    import calibrant.metrics.calibration as calibration

    calls = []

    def fake_reliability_curve(logits, target, *, n_bins, ignore_index, mask):
        # Minimal private stand-in: top-label curve of the masked, non-ignored pixels.
        calls.append((n_bins, ignore_index, mask.clone()))
        prob = torch.softmax(logits.double(), 1)
        conf, pred = prob.max(1)
        keep = mask & (target != ignore_index)
        c, a = conf[keep], (pred == target)[keep].double()
        edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
        b = (torch.ceil(c * n_bins) - 1).long().clamp(0, n_bins - 1)
        count = torch.bincount(b, minlength=n_bins)
        cs = torch.bincount(b, weights=c, minlength=n_bins)
        as_ = torch.bincount(b, weights=a, minlength=n_bins)
        return ReliabilityCurve(edges, count, cs / count, as_ / count)

    monkeypatch.setattr(calibration, "reliability_curve", fake_reliability_curve, raising=False)
    logits = torch.randn(2, 3, 10, 10, generator=generator)
    y = torch.zeros(2, 10, 10, dtype=torch.long)
    y[:, 2:8, 2:8] = 1
    y[:, 4:6, 4:6] = 2
    y[0, 0, 0] = -100
    curves = plot.region_reliability_curves(logits, y, n_bins=10)
    assert set(curves) == {"inner", "boundary"}
    masks = plot.region_masks(y)
    assert [c[0] for c in calls] == [10, 10] and all(c[1] == -100 for c in calls)
    assert torch.equal(calls[0][2], masks["inner"]) and torch.equal(calls[1][2], masks["boundary"])
    n_valid = int((y != -100).sum())
    assert int(curves["inner"].count.sum() + curves["boundary"].count.sum()) == n_valid
    fig = plot.region_reliability_diagram(curves)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="shape"):
        plot.region_reliability_curves(logits, y[:, :5])


def test_streamed_region_curves_equal_one_shot(generator):
    """The report's streaming curves over two batches equal the one-shot curves of both."""
    from calibrant.metrics import RegionReliabilityCurves

    logits = torch.randn(4, 3, 12, 12, generator=generator)
    y = torch.randint(0, 3, (4, 12, 12), generator=generator)
    y[0, :3] = -100
    streamed = RegionReliabilityCurves(n_bins=10)
    streamed.update(logits[:2], y[:2])
    streamed.update(logits[2:], y[2:])
    got = streamed.compute()
    want = plot.region_reliability_curves(logits, y, n_bins=10)
    for region in ("inner", "boundary"):
        assert torch.equal(got[region].count, want[region].count)
        torch.testing.assert_close(got[region].confidence, want[region].confidence, equal_nan=True)
        torch.testing.assert_close(got[region].accuracy, want[region].accuracy, equal_nan=True)
    assert int(got["all"].count.sum()) == int((y != -100).sum())


def test_classwise_curves_match_a_loop_reference(generator):
    """Class k's curve bins p_k over all valid pixels against the frequency of label k."""
    from calibrant.metrics import ClasswiseCalibrationError

    logits = torch.randn(3, 4, 6, 6, generator=generator)
    y = torch.randint(0, 4, (3, 6, 6), generator=generator)
    y[1, 2:] = -100
    m = ClasswiseCalibrationError(num_classes=4, n_bins=5)
    m.update(logits[:2], y[:2])
    m.update(logits[2:], y[2:])
    probs = logits.softmax(1).movedim(1, -1)[y != -100].double()
    labels = y[y != -100]
    for k, curve in enumerate(m.curves()):
        p = probs[:, k]
        idx = torch.clamp((p * 5).ceil().long() - 1, 0, 4)  # right-closed bins, 0 in the first
        for b in range(5):
            sel = idx == b
            assert int(curve.count[b]) == int(sel.sum())
            if sel.any():
                assert float(curve.confidence[b]) == pytest.approx(float(p[sel].mean()))
                assert float(curve.accuracy[b]) == pytest.approx(
                    float((labels[sel] == k).double().mean())
                )


def test_save_figure_releases_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    fig = plt.figure()
    plot.save_figure(fig, tmp_path / "f.png")
    assert len(plt.get_fignums()) == before
    kept = plt.figure()
    plot.save_figure(kept, tmp_path / "g.png", close=False)
    assert kept.number in plt.get_fignums()
    plt.close(kept)


# ------------------------------------------------------------ named figures (issue 16, item 21)


def _crac_history(epochs=3):
    history = []
    for e in range(1, epochs + 1):
        lam = [[10.0 ** (-k) * e for k in range(4)], [3e-3 * e * (k + 1) for k in range(4)]]
        history.append({"epoch": e, "alm": {"alm0": {"lambda": lam, "rho": [[0.1] * 4] * 2}}})
    return history


def _acdc_slots():
    from calibrant.alm.presets import crac
    from calibrant.data.acdc import ACDC_CLASSES
    from calibrant.runlog import alm_slots

    return alm_slots(crac(4), ACDC_CLASSES, "crac")


def _labels(ax):
    return [line.get_label() for line in ax.get_lines()]


def test_multipliers_figure_names_regions_classes_and_every_axis():
    fig = plot.alm_trajectories(_crac_history(), slots=_acdc_slots())
    lam, rho = fig.axes
    assert lam.get_title() == "CRaC multipliers λ"
    assert rho.get_title() == "CRaC penalty coefficients ρ"
    for ax in (lam, rho):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
    assert lam.get_ylabel() == "λ" and rho.get_ylabel() == "ρ"
    assert _labels(lam)[:2] == ["inner / background", "inner / right ventricle"]
    assert _labels(lam)[-1] == "boundary / left ventricle"
    assert lam.get_legend() is not None
    # region is the line style, class the colour
    lines = {line.get_label(): line for line in lam.get_lines()}
    inner, boundary = lines["inner / right ventricle"], lines["boundary / right ventricle"]
    assert inner.get_linestyle() == "-" and boundary.get_linestyle() == "--"
    assert inner.get_color() == boundary.get_color() != lines["inner / myocardium"].get_color()
    assert lam.get_yscale() == "log"  # λ spans four decades
    # ρ: the 8 identical trajectories are one line on a linear axis
    assert _labels(rho) == ["all 8 slots"]
    assert rho.get_yscale() == "linear"
    low, high = rho.get_ylim()
    assert low < 0.1 < high


def test_multipliers_figure_keeps_distinct_rho_and_infers_names_of_old_runs():
    history = _crac_history()
    for r in history:
        r["alm"]["alm0"]["rho"] = [[0.1, 0.1, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]
    # a metrics.json written before slot names were saved: names from the shape and classes
    fig = plot.alm_trajectories(history, class_names=["bg", "RV", "MYO", "LV"])
    lam, rho = fig.axes
    assert lam.get_title() == "multipliers λ"
    assert "inner / MYO" in _labels(lam)
    assert sorted(_labels(rho)) == ["6 slots (inner / bg, …)", "inner / MYO, inner / LV"]


def test_class_curves_are_titled_with_the_dataset_class_names(tmp_path, monkeypatch):
    import json

    from calibrant import report

    c = _curve()
    curve = {k: v.tolist() for k, v in c._asdict().items()}
    names = ["background", "right_ventricle", "myocardium", "left_ventricle"]
    payload = {
        "curves": {f"reliability/class_{k}": curve for k in range(4)}
        | {f"reliability/{r}": curve for r in ("all", "inner", "boundary")},
        "info": {"task": "segmentation", "class_names": names},
        "history": [],
    }
    (tmp_path / "metrics.json").write_text(json.dumps(payload))
    drawn = {}

    def capture(fig, path, **kwargs):
        drawn[path.name] = [ax.get_title() for ax in fig.axes if ax.get_title()]
        return path

    monkeypatch.setattr(plot, "save_figure", capture)
    report.plot_run(tmp_path)
    assert drawn["reliability_classwise.png"] == [
        "background",
        "right ventricle",
        "myocardium",
        "left ventricle",
    ]
    assert drawn["reliability.png"] == ["test, all pixels (top label)"]
    assert drawn["reliability_regions.png"] == ["inner pixels", "boundary pixels"]


def test_training_curves_label_both_axes():
    hist = [{"epoch": e, "train": {"loss": 1 / e}, "val": {"dice": e / 4}} for e in (1, 2)]
    for ax in plot.training_curves(hist).axes:
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
