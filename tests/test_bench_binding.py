"""The constraint-binding table of the bench pages (:mod:`calibrant.bench.binding`).

Expected cells are worked out by hand from the synthetic records below.
"""

from __future__ import annotations

from calibrant.bench.binding import binding_rows, binding_section


def _run(seed, lam, rho, viol, *, name="crac", train=None, task="acdc", method="crac"):
    last = {
        "train": train or {"loss": 1.0, "alm": 0.25},
        "alm": {"alm0": {"lambda": lam, "rho": rho, "violation": viol}},
    }
    return {
        "seed": seed,
        "task": task,
        "method": method,
        "config": {"loss": {"name": name}},
        "history": [{"train": {"loss": 2.0}}, last],
    }


def test_rows_read_the_last_pass_and_the_floor_of_the_registered_loss():
    # CRaC: λ per (region, class), floor 1e-6 (preset) -> 10 × floor = 1e-5.
    crac = _run(2, [[4.0, 1e-6], [2.0, 5e-6]], [[0.1, 0.1], [0.2, 0.1]], [[0.5, 0.1], [0.3, 0.1]])
    # means: λ (4 + 1e-6 + 2 + 5e-6) / 4 = 1.5000015; violation 1.0 / 4 = 0.25
    assert binding_rows([crac]) == ["| 2 | 1.5 | 4 | 2 of 4 | 0.2 | 0.25 | 0.5 | 25 % | yes |"]


def test_a_margin_constraint_at_its_floor_is_reported_as_never_above_it():
    run = _run(
        1,
        [1e-6, 2e-6, 9e-6],
        [1.0, 1.0, 1.0],
        [-0.9, -0.3, -0.6],
        name="cals_alm",
        train={"loss": 0.5, "alm": 5e-8},
    )
    assert binding_rows([run]) == [
        "| 1 | 4e-06 | 9e-06 | 3 of 3 | 1 | -0.6 | -0.3 | 1e-05 % | no |"
    ]


def test_rows_are_sorted_by_seed_and_runs_without_alm_are_skipped():
    a = _run(3, [1.0], [1.0], [0.0], name="cals_alm")
    b = _run(1, [1.0], [1.0], [0.0], name="cals_alm")
    plain = {
        "seed": 2,
        "task": "acdc",
        "method": "ce",
        "config": {"loss": {"name": "ce"}},
        "history": [{"train": {"loss": 1.0}}],
    }
    rows = binding_rows([a, plain, b])
    assert [r.split("|")[1].strip() for r in rows] == ["1", "3"]


def test_section_lists_alm_methods_of_the_task_only():
    runs = [
        _run(1, [1.0], [1.0], [0.0], name="cals_alm", method="cals_alm"),
        _run(1, [1.0], [1.0], [0.0], name="cals_alm", method="cals_alm", task="other"),
        {"seed": 1, "task": "acdc", "method": "ce", "history": [{"train": {}}]},
    ]
    lines = binding_section(runs, "acdc", {"cals_alm": "CALS-ALM"})
    assert "*CALS-ALM*" in lines
    assert sum(line.startswith("| 1 |") for line in lines) == 1
    assert binding_section(runs[2:], "acdc", {}) == []


def test_what_a_record_lacks_is_shown_as_a_dash():
    run = _run(1, [0.5, 1.5], [1.0, 2.0], [0.0, 0.0], name="focal", train={"loss": 1.0})
    del run["history"][-1]["alm"]["alm0"]["violation"]
    assert binding_rows([run]) == ["| 1 | 1 | 1.5 | – | 2 | – | – | – % | – |"]
