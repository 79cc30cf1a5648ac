"""Bootstrap intervals of equal-mass ACE: one metric call per resample against one weighted pass.

Every resample of the test samples moves the equal-mass bin edges, so the straightforward
interval calls the one-shot metric (a sort) once per resample. ``resampled_metric`` sorts once
and reads every resample's bins from prefix sums weighted by the samples' multiplicities
(``metrics/_binning.adaptive_weighted``). Data: the committed MULAN yeast BCE record (917 test
samples × 14 labels, seed 1), the largest of the converged multi-label records. Each variant
runs in a fresh process (peak RSS is the process's), median of ``--repeats``.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_intervals.py``
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RECORD = "docs/results/spa-mulan/converged/yeast/bce/seed1.json"
OUT = Path(__file__).parent / "results" / "intervals.md"


def _one(variant: str, threads: int, resamples: int) -> None:
    import numpy as np
    import torch

    from calibrant.bench.records import load_predictions
    from calibrant.metrics import multilabel_calibration_error
    from calibrant.metrics.resampled import resampled_metric
    from calibrant.stats import bootstrap_indices

    torch.set_num_threads(threads)
    p = load_predictions(Path(RECORD))
    idx = bootstrap_indices(len(p["probability"]), resamples, 0)
    start = time.perf_counter()
    if variant == "per-resample calls":
        prob = torch.from_numpy(p["probability"])
        y = torch.from_numpy((p["target"] == 1).astype(np.int64))
        values = [
            float(multilabel_calibration_error(prob[r], y[r], norm="adaptive", input_kind="probs"))
            for r in map(torch.from_numpy, idx)
        ]
    else:
        values = resampled_metric(p, "ace", idx).tolist()
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{seconds} {rss} {sum(values)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        _one(args.one[0], int(args.one[1]), args.resamples)
        return
    variants = ("per-resample calls", "weighted pass")
    rows = []
    for threads in (1, 2):
        result = {}
        for v in variants:
            runs = []
            for _ in range(args.repeats):
                cmd = [sys.executable, __file__, "--resamples", str(args.resamples)]
                cmd += ["--one", v, str(threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs.append([float(x) for x in out.stdout.split()])
            sums = {round(r[2], 9) for r in runs}
            result[v] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs), sums)
        assert result[variants[0]][2] == result[variants[1]][2], "the two variants disagree"
        base = result[variants[0]][0]
        for v in variants:
            s, rss, _ = result[v]
            rows.append(f"| {threads} | {v} | {s * 1000:.0f} | {base / s:.1f}× | {rss:.0f} |")
    text = "\n".join(
        [
            "# Bootstrap intervals of equal-mass ACE",
            "",
            f"Command: `PYTHONPATH=src .venv/bin/python benchmarks/bench_intervals.py "
            f"--resamples {args.resamples} --repeats {args.repeats}`",
            f"Machine: {platform.platform()}, {platform.processor() or 'cpu'}; torch "
            f"{__import__('torch').__version__}. Data: `{RECORD}` (917 × 14 pairs), "
            f"{args.resamples} resamples; both variants give the same values (checked).",
            "",
            "| threads | variant | median ms | speed-up | peak RSS MiB |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
