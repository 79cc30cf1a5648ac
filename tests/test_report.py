"""Run reports: the metric legend (issue 16, item 20) and what report.md and metrics.json hold."""

import json
from types import SimpleNamespace

import matplotlib
import pytest

matplotlib.use("Agg")

from calibrant import report  # noqa: E402
from calibrant.config import load_config  # noqa: E402
from calibrant.registry import METRICS  # noqa: E402


def _legend(preset):
    specs = load_config(preset)["eval"]["test_metrics"]
    lines = report.metric_legend(specs)
    return {line.split("`")[1]: line for line in lines if line.startswith("- `")}


def test_every_registered_metric_has_a_legend_and_a_direction():
    import calibrant  # noqa: F401  (registers every metric)

    for name in METRICS.names():
        meta = METRICS.meta(name)
        assert meta.get("better") in ("higher", "lower", "zero", ""), name
        assert len(meta.get("legend", "")) > 10, name


def test_acdc_legend_says_protocol_subset_and_direction():
    legend = _legend("acdc_ce")
    assert set(legend) == {
        "dice", "hd95", "dice_legacy", "ece_paper", "tace_paper", "ece_pooled", "cece_pooled",
        "nll",
    }  # fmt: skip
    paper, pooled = legend["ece_paper"], legend["ece_pooled"]
    assert "↓" in paper and "ground-truth-foreground pixels, mean over volumes" in paper
    assert "METHODS §7.2" in paper and "`paper_ece`" in paper
    assert "↓" in pooled and "all samples pooled" in pooled and "`ece`" in pooled
    assert "↑" in legend["dice"] and "include_background=false" in legend["dice"]
    assert 'empty="legacy"' in legend["dice_legacy"]
    assert "↓" in legend["hd95"] and "mm" in legend["hd95"]


def test_legend_of_an_unknown_or_picked_metric():
    lines = report.metric_legend([{"name": "binary_scores", "as": "jaccard", "pick": "jaccard"}])
    assert any("entry `jaccard` of" in line for line in lines)
    assert report.metric_legend([]) == []


def test_write_run_puts_the_legend_and_the_names_in_the_run_folder(tmp_path):
    import torch

    from calibrant.alm.presets import crac
    from calibrant.data.acdc import ACDC_CLASSES
    from calibrant.data.base import DatasetInfo

    cfg = load_config("acdc_crac")
    info = DatasetInfo("acdc", 4, ACDC_CLASSES, spatial_dims=2, task="segmentation")
    exp = SimpleNamespace(info=info, criterion=crac(4))
    lam = torch.full((2, 4), 0.1).tolist()
    history = [
        {"epoch": 1, "train": {"loss": 1.0}, "val": {"dice": 0.5}, "lr": [1e-3],
         "alm": {"alm0": {"lambda": lam, "rho": lam}}},
    ]  # fmt: skip
    results = {"test": {"dice": 0.5, "ece_paper": 0.1, "ece_pooled": 0.02}, "curves": {}}
    report.write_run(tmp_path, cfg, history, {**results, "checkpoint": "best"}, exp)
    text = (tmp_path / "report.md").read_text()
    assert "## Metrics" in text and "↑ higher is better" in text
    assert text.index("## Metrics") < text.index("## Figures")
    assert "- `ece_paper` ↓ — " in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["info"]["class_names"] == list(ACDC_CLASSES)
    assert metrics["alm_slots"]["alm0"]["slots"][1] == "inner/right_ventricle"
    assert (tmp_path / "figures" / "multipliers.png").is_file()


@pytest.mark.parametrize("preset", ["fmnist_lt_ce", "mulan_bce", "hippocampus_ce"])
def test_every_preset_metric_has_a_legend_line(preset):
    specs = load_config(preset)["eval"]["test_metrics"]
    legend = _legend(preset)
    assert len(legend) == len(specs)
    assert all("no description" not in line for line in legend.values())
