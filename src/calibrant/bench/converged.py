"""The ``converged`` profile of the suites (issue #15): its name, its gate, its eval sections.

The papers study networks trained to convergence, which are over-confident; the short ``cpu``
profile's baselines are not, so no calibration method has anything to remove there. The
``converged`` profile trains longer, without the regularisers that hide over-confidence, and
tests the *last* checkpoint. A pilot (CE/BCE, seed 1) runs first on each task and the other
methods run only where its test over-confidence is at least +3 points (the papers' protocol).

Example:
    >>> cls_eval("cifar10_ce")["checkpoint"]
    'last'
"""

from __future__ import annotations

from calibrant.config import load_config

__all__ = [
    "CONVERGED",
    "OVERCONFIDENCE_GATE",
    "cls_eval",
    "multilabel_eval",
    "seg_eval",
    "with_overconfidence",
]

CONVERGED = "converged"
OVERCONFIDENCE_GATE = 0.03


def with_overconfidence(preset: str, val: list[dict], test: list[dict]) -> dict:
    """The preset's eval section, tested on the last checkpoint, with over-confidence added."""
    ev = load_config(preset)["eval"]
    return {
        "checkpoint": "last",
        "val_metrics": [*ev.get("val_metrics", []), *val],
        "test_metrics": [*ev.get("test_metrics", []), *test],
    }


def seg_eval(preset: str) -> dict:
    """Segmentation: validation ECE and over-confidence, test over-confidence (paper and pooled)."""
    return with_overconfidence(
        preset,
        val=[
            {"name": "paper_ece", "as": "ece_paper"},
            {"name": "paper_overconfidence", "as": "oc_paper"},
        ],
        test=[
            {"name": "paper_overconfidence", "as": "oc_paper"},
            {"name": "overconfidence", "as": "oc_pooled"},
        ],
    )


def cls_eval(preset: str) -> dict:
    """Classification: validation ECE and over-confidence, test over-confidence."""
    oc = [{"name": "ece", "as": "ece"}, {"name": "overconfidence", "as": "oc"}]
    return with_overconfidence(preset, val=oc, test=oc[1:])


def multilabel_eval(preset: str) -> dict:
    """Multi-label: validation ACE and over-confidence, test over-confidence."""
    oc = [
        {"name": "multilabel_ace", "as": "ace"},
        {"name": "multilabel_overconfidence", "as": "oc"},
    ]
    return with_overconfidence(preset, val=oc, test=oc[1:])
