"""Top-label confidence minus accuracy on the test voxels of the papers' ECE protocol.

The papers' ECE (METHODS §7.2) scores ground-truth-foreground voxels only; the records'
reliability curves cover all voxels. This re-evaluates finished run folders (best checkpoint)
and prints, per run, the voxel-weighted mean confidence, accuracy and their gap on the
ground-truth foreground and background, and on how many test volumes the foreground gap is
positive (over-confident).

Usage (from the repository root, run folders of ``calibrant bench crac-hippocampus``):
    CALIBRANT_DATA=../shared/data .venv/bin/python \
        docs/results/crac-hippocampus/cpu/foreground_gap.py \
        runs/bench/crac-hippocampus/cpu/hippocampus/ce/seed2-*
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from calibrant.checkpoint import load_checkpoint
from calibrant.experiment import build_experiment


def foreground_gap(run: Path) -> str:
    """One line: the foreground and background gaps of ``run``'s best checkpoint on test."""
    cfg = json.loads((run / "config.json").read_text())
    exp = build_experiment(cfg, data_root=os.environ.get("CALIBRANT_DATA"))
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt", required=("model",))
    exp.model.load_state_dict(ckpt["model"])
    exp.model.eval()
    sums = {"fg": [0, 0.0, 0.0], "bg": [0, 0.0, 0.0]}  # voxels, confidence, correct
    over, volumes = 0, 0
    with torch.no_grad():
        for inputs, target in exp.test_loader:
            logits = exp.infer(exp.model, inputs) if exp.infer else exp.model(inputs)
            conf, pred = logits.float().softmax(1).max(1)
            correct = (pred == target).double()
            for name, keep in (("fg", target > 0), ("bg", target == 0)):
                sums[name][0] += int(keep.sum())
                sums[name][1] += float(conf[keep].double().sum())
                sums[name][2] += float(correct[keep].sum())
            fg = target > 0
            over += bool(conf[fg].double().mean() > correct[fg].mean())
            volumes += 1
    parts = [
        f"{name}: n={n} conf {c / n:.4f} acc {a / n:.4f} gap {100 * (c - a) / n:+.2f} %"
        for name, (n, c, a) in sums.items()
    ]
    over_line = f"fg over-confident {over}/{volumes}"
    return f"{run.parent.name}/{run.name}: " + "; ".join(parts + [over_line])


if __name__ == "__main__":
    torch.set_num_threads(1)
    for arg in sys.argv[1:]:
        print(foreground_gap(Path(arg)), flush=True)
