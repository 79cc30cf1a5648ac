"""``calibrant bench``: suite resolution, claims, tables, and resumable runs on real data."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from calibrant.bench import Claim, Column, Method, Suite, Table, Task, plan, run_suite
from calibrant.bench import claims as C
from calibrant.bench.runner import config_key, record_path, run_dir
from calibrant.bench.tables import _task_table, kendall_tau, load_records, render_suite
from calibrant.cli import main
from calibrant.registry import SUITES


def _toy_suite(epochs: int = 2) -> Suite:
    return Suite(
        "toy",
        "MULAN scene, two losses and a post-hoc correction.",
        tasks=(
            Task(
                "scene",
                "mulan_bce",
                {"data": {"name": "mulan_scene"}, "train": {"epochs": epochs}},
                profiles={"paper": {"train": {"epochs": 3}}},
                paper={"bce": {"ace": 2.0}, "focal": {"ace": 5.0}},
                paper_source="made up",
            ),
        ),
        methods=(
            Method("bce", "BCE", {"name": "bce"}),
            Method("focal", "Focal", {"name": "asymmetric_focal"}),
            Method("focal_phi", "Focal+φ", calibrator="phi", base="focal"),
        ),
        columns=(Column("ace", "ACE", higher_is_better=False, scale=100, digits=2),),
        seeds={"cpu": 1, "paper": 2},
        claims=(Claim("φ repairs focal", C.repairs("focal_phi", "focal", "bce", "ace")),),
    )


# ------------------------------------------------------------------------ suite definitions


def test_config_resolution_order():
    suite = _toy_suite()
    cfg = suite.config("scene", "focal", "paper", seed=2)
    assert cfg["loss"] == {"name": "asymmetric_focal"}  # the method's loss replaces the preset's
    assert cfg["data"]["name"] == "mulan_scene"  # task override
    assert cfg["train"]["epochs"] == 3  # profile override wins over the task's
    assert cfg["train"]["seed"] == 2
    assert cfg["model"]["name"] == "mlp"  # from the preset
    # a post-hoc method runs on its base's config
    assert suite.config("scene", "focal_phi", "cpu", 1) == suite.config("scene", "focal", "cpu", 1)


def test_suite_definition_errors():
    with pytest.raises(ValueError, match="must come after its base"):
        Suite(
            "bad",
            "",
            tasks=(),
            methods=(Method("ts", "TS", calibrator="temperature", base="ce"),),
            columns=(),
            seeds={"cpu": 1},
        )
    with pytest.raises(ValueError, match="exactly one of loss= or calibrator="):
        Method("x", "X")
    with pytest.raises(ValueError, match="needs base="):
        Method("x", "X", calibrator="temperature")
    with pytest.raises(KeyError, match="did you mean 'focal'"):
        _toy_suite().method("focl")
    with pytest.raises(ValueError, match="no profile 'gpu'"):
        _toy_suite().seed_list("gpu")


@pytest.mark.parametrize(
    "name",
    [
        "crac-acdc",
        "crac-hippocampus",
        "spa-mulan",
        "cals-classification",
        "all-binary",
        "all-sensitivity",
    ],
)
def test_registered_suites_resolve_every_run(name):
    """Every (task, method, profile) of a shipped suite builds a config with a known loss."""
    from calibrant.registry import LOSSES

    suite = SUITES.build(name)
    for profile in suite.profiles:
        for task in suite.tasks:
            for method in suite.methods:
                cfg = suite.config(task.name, method.name, profile, 1)
                assert cfg["loss"]["name"] in LOSSES
    for task in suite.tasks:  # published numbers only name methods and columns of the suite
        for method, values in (task.paper or {}).items():
            suite.method(method)
            assert set(values) <= {c.key for c in suite.columns}


# -------------------------------------------------------------------------- claims and tables


def _table(**means):
    return Table({("t", m): {"ece": [v], "dice": [1 - v]} for m, v in means.items()})


def test_claims_hold_fail_and_wait_for_missing_results():
    table = _table(ce=0.10, ls=0.08, crac=0.05)
    assert C.lowest("crac", ["ece"])(table, "t").holds is True
    assert C.lowest("ls", ["ece"])(table, "t").holds is False
    assert C.lowest("nacl", ["ece"])(table, "t").holds is None
    assert C.beats_baseline("ce", "ece")(table, "t").holds is True
    assert C.beats_baseline("ls", "ece")(table, "t").holds is False
    assert C.beats("ls", ["crac"], "ece")(table, "t").holds is False
    assert C.within_best("ls", "dice", 0.03)(table, "t").holds is True  # 0.92 vs 0.95
    assert C.within_best("ce", "dice", 0.03)(table, "t").holds is False  # 0.90 vs 0.95
    assert C.not_worse("ls", "crac", "dice", tolerance=0.02)(table, "t").holds is False
    # φ-style repair: ls (0.08) removes 2/5 of ce's gap (0.10 vs crac 0.05)
    assert C.repairs("ls", "ce", "crac", "ece", fraction=0.4)(table, "t").holds is True
    assert C.repairs("ls", "ce", "crac", "ece", fraction=0.5)(table, "t").holds is False
    assert C.repairs("ls", "crac", "ce", "ece")(table, "t").holds is False  # no gap to repair


def test_tuned_rows_search_around_the_published_weight():
    """crac-acdc's tuned rows keep their base's loss and their grids hold its published value."""
    suite = SUITES.build("crac-acdc")
    tuned = [m for m in suite.methods if m.search is not None]
    assert [m.name for m in tuned] == ["mbls_tuned", "nacl_tuned"]
    for m in tuned:
        base = suite.method(m.name.removesuffix("_tuned"))
        assert m.loss == base.loss and m.search.metric == "ece_paper"
        for key, values in m.search.grid.items():
            assert base.loss[key.removeprefix("loss.")] in values
    assert all(m.search is None for m in SUITES.build("crac-hippocampus").methods)


def test_longer_3d_rows_only_lengthen_the_schedule_and_stay_out_of_the_claims():
    """CE/CRaC (30 epochs) differ from CE/CRaC in epochs and StepLR step, nothing else."""
    suite = SUITES.build("crac-hippocampus")
    for base in ("ce", "crac"):
        short, long = (suite.config("hippocampus", n, "cpu", 1) for n in (base, f"{base}_e30"))
        assert (long["train"]["epochs"], long["sched"]["step_size"]) == (30, 24)
        assert short["sched"]["step_size"] / short["train"]["epochs"] == 24 / 30
        for cfg in (short, long):
            del cfg["train"]["epochs"], cfg["sched"]["step_size"]
        assert short == long
    columns = ("dice", "ece_paper", "tace_paper")
    means = {m.name: 0.5 for m in suite.methods} | {"crac": 0.1, "crac_e30": 0.0, "ce_e30": 0.0}
    table = Table({("t", m): {c: [v] for c in columns} for m, v in means.items()})
    lowest = next(c for c in suite.claims if c.text.startswith("CRaC has the lowest"))
    assert lowest.check(table, "t").holds is True  # the 30-epoch rows are not compared
    assert "crac_e30" not in {m.name for m in SUITES.build("crac-acdc").methods}
    rows = {line.split(" | ")[0]: line for line in _task_table(suite, table, "t")}
    assert "**" not in rows["| *CRaC (30 epochs)*"]  # lower, yet not bold: not compared
    assert rows["| CRaC"].count("**") == 2 * len(columns[1:])  # bold on ECE and TACE


@pytest.mark.parametrize("name", ["crac-acdc", "crac-hippocampus"])
def test_segmentation_claims_reach_a_verdict_once_every_method_of_the_suite_ran(name):
    """crac-hippocampus has no BWCR: its claims must not wait for a BWCR result."""
    suite = SUITES.build(name)
    columns = ("dice", "ece_paper", "tace_paper")
    means = {m.name: 0.5 for m in suite.methods} | {"crac": 0.1}  # CRaC best on every column
    table = Table({("t", m): {c: [v] for c in columns} for m, v in means.items()})
    verdicts = {c.text: c.check(table, "t").holds for c in suite.claims}
    assert verdicts["CRaC has the lowest ECE and TACE of all methods"] is True
    assert verdicts["CRaC's Dice is within 1 point of the best"] is False  # 0.1 against 0.5
    assert None not in verdicts.values()


def test_table_statistics():
    table = Table({("t", "a"): {"x": [1.0, 2.0, 4.0, math.nan]}})
    assert table.mean("t", "a", "x") == pytest.approx(7 / 3)
    assert table.std("t", "a", "x") == pytest.approx(stats.tstd([1.0, 2.0, 4.0]))
    assert table.mean("t", "b", "x") is None and table.std("t", "a", "y") is None


def test_kendall_tau_matches_scipy(generator):
    import torch

    for _ in range(20):
        a = torch.rand(7, generator=generator).tolist()
        b = torch.rand(7, generator=generator).tolist()
        assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)
    with pytest.raises(ValueError, match="equal length"):
        kendall_tau([1.0, 2.0], [1.0])


# ------------------------------------------------------------------------ runs on real data


def test_run_suite_records_resumes_and_renders(data_root, tmp_path, monkeypatch):
    suite = _toy_suite()
    results, work = tmp_path / "results", tmp_path / "work"
    written = run_suite(suite, results=results, work=work, data_root=data_root, command="test")
    assert [p.parent.name for p in written] == ["bce", "focal", "focal_phi"]
    records = {r["method"]: r for r in load_records(results, "toy", "cpu")}
    assert records["bce"]["test"]["ace"] >= 0.0 and records["bce"]["history"]
    assert records["focal_phi"]["calibrator"] == "phi" and records["focal_phi"]["history"] == []
    # φ is monotone per label: the class-wise mAP is unchanged, the calibration is not
    assert records["focal_phi"]["test"]["map_y"] == pytest.approx(records["focal"]["test"]["map_y"])
    assert records["focal_phi"]["test"]["ace"] != records["focal"]["test"]["ace"]
    assert all(r["environment"]["torch"] and r["command"] == "test" for r in records.values())

    # A second call finds everything done and trains nothing.
    import calibrant.bench.runner as runner

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "train_run", no_training)
    assert run_suite(suite, results=results, work=work, data_root=data_root) == []
    assert all(r.done for r in plan(suite, results))

    # A lost record whose run folder finished is rebuilt from the folder, without training.
    record_path(results, "toy", "cpu", "scene", "bce", 1).unlink()
    (rebuilt,) = run_suite(suite, results=results, work=work, data_root=data_root)
    assert json.loads(rebuilt.read_text())["test"] == records["bce"]["test"]
    # the training time is the run's epochs summed (from the folder's history, whoever reads it)
    epochs = [h["seconds"] for h in records["bce"]["history"]]
    assert all(t > 0 for t in epochs)
    assert json.loads(rebuilt.read_text())["train_seconds"] == round(sum(epochs), 1)
    assert records["focal_phi"]["train_seconds"] == records["focal"]["train_seconds"]

    # The page is generated from the records: the table cell is the record's value.
    page = render_suite(suite, results, figures=False).read_text()
    assert f"| BCE | 1 | {100 * records['bce']['test']['ace']:.2f} |" in page
    assert "φ repairs focal" in page and "Runs finished: 3 of 3" in page
    # published numbers beside ours, and the agreement of the two orderings
    ours = {m: 100 * records[m]["test"]["ace"] for m in ("bce", "focal")}
    assert f"| BCE | {ours['bce']:.2f} | 2.00 |" in page
    tau = 1.0 if ours["bce"] < ours["focal"] else -1.0
    assert f"- ACE: τ = {tau:+.2f} over 2 methods" in page


def test_a_changed_suite_makes_records_stale_and_reruns_them(data_root, tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    run_suite(_toy_suite(), results=results, work=work, data_root=data_root, methods=["bce"])
    old = json.loads(record_path(results, "toy", "cpu", "scene", "bce", 1).read_text())
    changed = _toy_suite(epochs=3)  # the suite definition changed after the run
    assert [r.state for r in plan(changed, results, methods=["bce"])] == ["stale"]
    page = render_suite(changed, results, figures=False).read_text()
    assert "Runs finished: 0 of 3" in page and "1 older records" in page
    run_suite(changed, results=results, work=work, data_root=data_root, methods=["bce"])
    new = json.loads(record_path(results, "toy", "cpu", "scene", "bce", 1).read_text())
    assert len(old["history"]) == 2 and len(new["history"]) == 3
    assert [r.state for r in plan(changed, results, methods=["bce"])] == ["done"]
    assert len(list((work / "toy" / "cpu" / "scene" / "bce").iterdir())) == 2  # one per config
    # a run folder holding another config than its name says is an error, never reused
    cfg = changed.config("scene", "bce", "cpu", 1)
    folder = run_dir(work, "toy", "cpu", "scene", "bce", 1, config_key(cfg))
    record_path(results, "toy", "cpu", "scene", "bce", 1).unlink()
    payload = json.loads((folder / "metrics.json").read_text())
    payload["config"]["train"]["epochs"] = 7
    (folder / "metrics.json").write_text(json.dumps(payload))
    from calibrant.bench.runner import BenchFailures

    with pytest.raises(BenchFailures, match="another config"):
        run_suite(changed, results=results, work=work, data_root=data_root, methods=["bce"])


def test_corrupt_record_is_named(tmp_path):
    path = record_path(tmp_path, "toy", "cpu", "scene", "bce", 1)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt benchmark record .*seed1.json"):
        load_records(tmp_path, "toy", "cpu")


def test_cli_bench_runs_a_selection_and_reports(data_root, tmp_path, capsys):
    args = ["bench", "spa-mulan", "--tasks", "scene", "--methods", "bce", "--seeds", "1"]
    where = ["--results", str(tmp_path / "r"), "--work", str(tmp_path / "w")]
    assert main([*args, *where, "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["todo", "scene", "bce", "seed", "1"]
    common = ["--data-root", str(data_root), "--device", "cpu", "--quiet", "--no-figures"]
    # --allow-dirty: this test is about the bench, not the provenance check (which a
    # developer's uncommitted work would trip; tests/test_bench_converged.py covers it)
    assert main([*args, *where, *common, "--allow-dirty"]) == 0
    assert "0 runs of this selection still to do" in capsys.readouterr().out
    page = (tmp_path / "r" / "spa-mulan.md").read_text()
    suite = SUITES.build("spa-mulan")
    total = len(suite.tasks) * len(suite.methods) * len(suite.seed_list("cpu"))
    assert f"Runs finished: 1 of {total}" in page
    assert main(["bench", "spa-mulna", *where]) == 2
    assert "did you mean 'spa-mulan'" in capsys.readouterr().err


def test_a_failing_run_is_reported_after_the_others(data_root, tmp_path):
    from calibrant.bench.runner import BenchFailures

    good = _toy_suite()
    suite = Suite(
        "toy",
        "",
        tasks=good.tasks,
        methods=(Method("broken", "Broken", {"name": "bce", "bogus": 1}), good.methods[0]),
        columns=good.columns,
        seeds={"cpu": 1},
    )
    results = tmp_path / "results"
    with pytest.raises(BenchFailures, match="scene Broken seed 1: .*bogus") as info:
        run_suite(suite, results=results, work=tmp_path / "work", data_root=data_root)
    assert len(info.value.failures) == 1
    assert [r.done for r in plan(suite, results)] == [False, True]  # BCE still ran


def test_page_links_reliability_grid_and_multiplier_figures(tmp_path):
    """Records with curves and ALM history give a reliability grid and λ/ρ trajectories."""
    suite = _toy_suite()
    curve = {
        "edges": [0.0, 0.5, 1.0],
        "count": [3, 5],
        "confidence": [0.3, 0.8],
        "accuracy": [0.2, 0.9],
    }
    history = [{"epoch": e, "alm": {"alm0": {"lambda": [e, 2 * e], "rho": [1, 1]}}} for e in (1, 2)]
    for method in ("bce", "focal"):
        path = record_path(tmp_path, "toy", "cpu", "scene", method, 1)
        path.parent.mkdir(parents=True)
        record = {
            "status": "done",
            "task": "scene",
            "method": method,
            "seed": 1,
            "test": {"ace": 0.1},
            "curves": {"reliability/all": curve},
            "history": history if method == "focal" else [],
            "environment": {"commit": "abc", "device": "cpu"},
            "command": "calibrant bench toy",
            "config": suite.config("scene", method, "cpu", 1),
        }
        path.write_text(json.dumps(record))
    (tmp_path / "toy" / "cpu" / "notes.md").write_text("Checked the link by hand.\n")
    page = render_suite(suite, tmp_path).read_text()
    assert "## Investigation notes" in page and "Checked the link by hand." in page
    figures = tmp_path / "toy" / "cpu" / "figures"
    assert (figures / "scene_reliability.png").stat().st_size > 0
    assert (figures / "scene_focal_multipliers.png").stat().st_size > 0
    assert not (figures / "scene_bce_multipliers.png").exists()
    assert "](toy/cpu/figures/scene_reliability.png)" in page
    assert "Commits: `abc`" in page and "`calibrant bench toy`" in page


def test_search_tunes_on_validation_and_seeds_use_the_choice(data_root, tmp_path):
    from calibrant.bench import Search
    from calibrant.bench.runner import search_path

    base = _toy_suite()
    search = Search({"loss.lam": (0.1, 2.0)}, "ace", higher_is_better=False)
    suite = Suite(
        "toy",
        "",
        tasks=base.tasks,
        methods=(Method("bce_lpr", "BCE+LPR", {"name": "bce_lpr"}, search=search),),
        columns=(*base.columns, Column("map_y", "mAP@y", higher_is_better=True)),
        seeds={"cpu": 2},
    )
    results, work = tmp_path / "results", tmp_path / "work"
    assert [r.state for r in plan(suite, results)] == ["todo", "todo"]
    run_suite(suite, results=results, work=work, data_root=data_root)
    found = json.loads(search_path(results, "toy", "cpu", "scene", "bce_lpr").read_text())
    scores = {c["values"]["loss.lam"]: c["score"] for c in found["candidates"]}
    assert set(scores) == {0.1, 2.0} and found["split"] == "val"
    best = min(scores, key=scores.get)
    assert found["chosen"] == {"loss.lam": best}
    for seed in (1, 2):
        record = json.loads(
            record_path(results, "toy", "cpu", "scene", "bce_lpr", seed).read_text()
        )
        assert record["config"]["loss"] == {"name": "bce_lpr", "lam": best}
        assert record["tuned"] == {"loss.lam": best}
    # the seed-1 run reuses the chosen candidate's training: same model, so its validation
    # score is the search's; its test score is a different split's
    seed1 = json.loads(record_path(results, "toy", "cpu", "scene", "bce_lpr", 1).read_text())
    assert seed1["test"]["ace"] != scores[best]
    assert len(list((work / "toy" / "cpu" / "scene" / "bce_lpr").iterdir())) == 3  # 2 + seed 2
    page = render_suite(suite, results, figures=False).read_text()
    assert "tuned on the validation split" in page and f"chosen `{{'loss.lam': {best}}}`" in page
    # each candidate's row also shows the page's other columns on the validation split
    assert "| loss.lam | val ace | val mAP@y |" in page
    row = next(c for c in found["candidates"] if c["values"]["loss.lam"] == best)
    assert f"| {best} | {row['score']:.4f} | {row['val']['map_y']:.4f} |" in page
    # another grid makes the choice and the records stale
    wider = Search({"loss.lam": (0.1, 2.0, 5.0)}, "ace", higher_is_better=False)
    changed = Suite(
        "toy",
        "",
        tasks=base.tasks,
        methods=(Method("bce_lpr", "BCE+LPR", {"name": "bce_lpr"}, search=wider),),
        columns=base.columns,
        seeds={"cpu": 2},
    )
    assert [r.state for r in plan(changed, results)] == ["stale", "stale"]
