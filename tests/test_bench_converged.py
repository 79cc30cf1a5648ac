"""The `converged` profile: the pilot gate, records with per-item data, provenance (issue 15)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from calibrant.bench import Column, Method, Suite, Task, plan, run_suite
from calibrant.bench.paired import PairedClaim
from calibrant.bench.runner import load_predictions, record_path
from calibrant.bench.suite import Pilot
from calibrant.bench.tables import render_suite
from calibrant.cli import main
from calibrant.config import load_config
from calibrant.metrics import multilabel_calibration_error
from calibrant.registry import METRICS, SUITES


def _gated_suite(threshold: float, epochs: int = 2) -> Suite:
    oc = [{"name": "multilabel_overconfidence", "as": "oc"}]
    return Suite(
        "toy",
        "MULAN scene with a pilot gate.",
        tasks=(
            Task(
                "scene",
                "mulan_bce",
                {"data": {"name": "mulan_scene"}, "train": {"epochs": epochs}},
                profiles={
                    "converged": {
                        "eval": {
                            "checkpoint": "last",
                            "val_metrics": [{"name": "map_classwise"}, *oc],
                            "test_metrics": [
                                {"name": "multilabel_ace", "as": "ace"},
                                *oc,
                            ],
                        }
                    }
                },
            ),
        ),
        methods=(
            Method("bce", "BCE", {"name": "bce"}),
            Method("focal", "Focal", {"name": "asymmetric_focal"}),
            Method("focal_phi", "Focal+φ", calibrator="phi", base="focal"),
        ),
        columns=(
            Column("ace", "ACE", higher_is_better=False, scale=100, digits=2),
            Column("oc", "over-confidence", False, scale=100, digits=2, bold=False),
        ),
        seeds={"cpu": 1, "converged": 1},
        pilots={"converged": Pilot("bce", "oc", threshold)},
        profile_methods={"converged": ("bce", "focal", "focal_phi")},
        paired_claims={
            "converged": (
                PairedClaim("BCE's ACE is below Focal's", "bce", ("focal",), "ace", "below"),
                PairedClaim("φ lowers Focal's MCE", "focal_phi", ("focal",), "mce", "below",
                            source="ours"),
            )
        },
    )  # fmt: skip


def test_a_no_go_pilot_stops_the_other_methods(data_root, tmp_path):
    suite = _gated_suite(threshold=0.99)  # no network is that over-confident
    results, work = tmp_path / "results", tmp_path / "work"
    written = run_suite(
        suite, results=results, work=work, data_root=data_root, profile="converged",
        methods=["focal", "bce"],  # the pilot runs first whatever the order asked for
    )  # fmt: skip
    assert [p.parent.name for p in written] == ["bce"]
    assert [r.state for r in plan(suite, results, "converged")] == ["done", "todo", "todo"]
    page = render_suite(suite, results, "converged", figures=False).read_text()
    assert "**no-go**" in page and "threshold +99.0" in page
    # the pilot's validation curve of its gate metric is on the page
    assert "validation `oc` over epochs" in page
    # --force runs them anyway
    forced = run_suite(
        suite, results=results, work=work, data_root=data_root, profile="converged", force=True
    )
    assert sorted(p.parent.name for p in forced) == ["focal", "focal_phi"]


def test_a_go_pilot_runs_the_rest_and_records_keep_their_samples(data_root, tmp_path):
    suite = _gated_suite(threshold=-1.0)
    results, work = tmp_path / "results", tmp_path / "work"
    run_suite(suite, results=results, work=work, data_root=data_root, profile="converged")
    assert all(r.done for r in plan(suite, results, "converged"))
    for method in ("bce", "focal", "focal_phi"):
        path = record_path(results, "toy", "converged", "scene", method, 1)
        record = json.loads(path.read_text())
        assert record["schema"] == 2 and record["checkpoint"] == "last"
        assert record["train_seconds"] > 0  # a post-hoc record carries its base's training
        assert record["seconds"] > 0
        assert record["environment"]["dirty_src"] in (True, False)
        # the per-sample predictions reproduce the recorded pooled ACE (the same streamed metric)
        pred = load_predictions(path)
        assert record["predictions"] == path.with_suffix(".predictions.npz").name
        p, y = pred["probability"], pred["target"]
        assert p.shape == y.shape and p.shape[1] == 6 and p.dtype == np.float32
        streamed = METRICS.build("multilabel_ace", input_kind="probs")
        streamed.update(_tensor(p), _tensor(y))
        assert float(streamed.compute()) == pytest.approx(record["test"]["ace"], abs=1e-7)
        exact = multilabel_calibration_error(
            _tensor(p), _tensor(y), norm="adaptive", input_kind="probs"
        )
        assert abs(float(exact) - record["test"]["ace"]) <= float(streamed.error_bound()) + 1e-7
    # the post-hoc method fits and tests the checkpoint the profile tests (the last one)
    phi = json.loads(record_path(results, "toy", "converged", "scene", "focal_phi", 1).read_text())
    focal = json.loads(record_path(results, "toy", "converged", "scene", "focal", 1).read_text())
    assert phi["checkpoint"] == "last" and focal["best_epoch"] == 2
    page = render_suite(suite, results, "converged", figures=False).read_text()
    assert "**go**" in page
    # the claims are decided on paired intervals from the records alone
    row = next(line for line in page.splitlines() if line.startswith("| BCE's ACE is below"))
    assert row.split(" | ")[2] in ("holds", "**fails**", "inconclusive")
    assert "BCE − (Focal): " in row and "→" in row
    assert "## Our questions (not claims of the papers)" in page and "φ lowers Focal's MCE" in page


def _tensor(a):
    import torch

    return torch.from_numpy(np.asarray(a))


def test_segmentation_records_keep_per_volume_values(data_root, tmp_path):
    """ACDC at a tiny scale: every test metric's per-volume values, whose mean is the metric."""
    suite = Suite(
        "toyseg",
        "",
        tasks=(
            Task(
                "acdc",
                "acdc_ce",
                {
                    "data": {"train_patients": 2, "downsample": 4},
                    "model": {"base_channels": 4, "depth": 2},
                    "train": {"epochs": 1},
                    "eval": {
                        "checkpoint": "last",
                        "test_metrics": [
                            {"name": "dice", "as": "dice", "include_background": False},
                            {"name": "paper_ece", "as": "ece_paper"},
                            {"name": "paper_overconfidence", "as": "oc_paper"},
                        ],
                    },
                },
            ),
        ),
        methods=(Method("ce", "CE", {"name": "ce"}),),
        columns=(Column("dice", "DSC", higher_is_better=True),),
        seeds={"cpu": 1},
    )
    results = tmp_path / "results"
    (path,) = run_suite(suite, results=results, work=tmp_path / "work", data_root=data_root)
    record = json.loads(path.read_text())
    items = record["items"]
    assert set(items) == {"dice", "ece_paper", "oc_paper"}
    assert len(items["dice"]) == 40  # 20 test patients x 2 frames
    for key in ("ece_paper", "oc_paper"):
        values = [v for v in items[key] if not math.isnan(v)]
        assert np.mean(values) == pytest.approx(record["test"][key], abs=1e-9)
    assert record["predictions"] is None


def test_converged_profiles_are_defined_with_their_pilots():
    for name, tasks in (
        ("crac-acdc", ["acdc"]),
        ("cals-classification", ["fmnist_lt", "cifar10"]),
        ("spa-mulan", ["scene", "yeast", "emotions"]),
    ):
        suite = SUITES.build(name)
        assert [t.name for t in suite.tasks_for("converged")] == tasks
        pilot = suite.pilots["converged"]
        assert pilot.threshold == 0.03 and pilot.method in ("ce", "bce")
        assert not any(m.investigation or m.search for m in suite.methods_for("converged"))
        for task in tasks:
            cfg = suite.config(task, pilot.method, "converged", 1)
            assert cfg["eval"]["checkpoint"] == "last"
            val = [m.get("as", m["name"]) for m in cfg["eval"]["val_metrics"]]
            test = [m.get("as", m["name"]) for m in cfg["eval"]["test_metrics"]]
            assert pilot.metric in val and pilot.metric in test
    # crac-acdc's converged profile is the demo's regime: `make demo` is one seed of it
    acdc = SUITES.build("crac-acdc").config("acdc", "ce", "converged", 1)
    demo = load_config("acdc_demo_ce")
    for section in ("data", "model", "optim", "sched", "train"):
        assert acdc[section] == demo[section], section
    assert acdc["data"]["train_patients"] == 12 and acdc["train"]["epochs"] == 30
    # the cpu records stay current: the profile changed nothing of the cpu configs
    assert all(r.done for r in plan(SUITES.build("spa-mulan"), "docs/results", "cpu"))


def test_bench_refuses_a_dirty_source_tree(monkeypatch, tmp_path, capsys):
    import calibrant.bench.runner as runner

    monkeypatch.setattr(runner, "environment", lambda device: {"dirty_src": True})
    where = ["--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")]
    assert main(["bench", "spa-mulan", "--seeds", "1", "--tasks", "scene", *where]) == 2
    assert "uncommitted changes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_row_with_fewer_seeds_is_never_bold_against_more():
    from calibrant.bench import Table
    from calibrant.bench.tables import _task_table

    suite = _gated_suite(threshold=0.0)
    table = Table(
        {
            ("scene", "bce"): {"ace": [0.05, 0.06, 0.07]},
            ("scene", "focal"): {"ace": [0.01]},  # lower, but one seed against three
        }
    )
    rows = {line.split(" | ")[0]: line for line in _task_table(suite, table, "scene")}
    assert "**6.00 ± 1.00**" in rows["| BCE"] and "**" not in rows["| Focal"]


def test_hd95_is_shown_beside_the_paper_in_the_papers_unit():
    from calibrant.bench.tables import _unit_factors

    suite = SUITES.build("crac-acdc")
    task = suite.task("acdc")
    assert _unit_factors(suite, task, "cpu") == {"hd95": (2.0, "data.downsample")}
    assert _unit_factors(suite, task, "converged") == {"hd95": (2.0, "data.downsample")}
    assert _unit_factors(suite, task, "paper") == {"hd95": (1.0, "data.downsample")}
