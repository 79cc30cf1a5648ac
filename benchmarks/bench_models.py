"""Parameter counts and forward/backward throughput of every registered model on this CPU.

Each (model, input) case runs in a fresh subprocess, so that the peak-RSS delta
(``resource.getrusage().ru_maxrss`` after minus before) belongs to that case alone. A step is
``zero_grad`` + forward + cross-entropy + backward (no optimiser step); throughput is
``batch / median step time`` over ``--repeats`` timed steps after ``--warmup`` untimed ones.
MONAI's ``BasicUNet`` is timed in the same run as a peer for the 2D UNets.

Usage:
    PYTHONPATH=src python benchmarks/bench_models.py            # all cases, writes the tables
    PYTHONPATH=src python benchmarks/bench_models.py --quick    # 96x96 / small cases only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name, registry name (or "peer:..."), build kwargs, input spec, batch, quick
CASES = [
    ("unet2d_paper @192", "unet2d_paper", {}, ("image", (1, 192, 192)), 8, False),
    ("unet2d_paper @96", "unet2d_paper", {}, ("image", (1, 96, 96)), 8, True),
    ("unet2d @96", "unet2d", {"num_classes": 4}, ("image", (1, 96, 96)), 8, True),
    ("peer: monai BasicUNet 2D @96", "peer:basicunet", {}, ("image", (1, 96, 96)), 8, True),
    ("dynunet 2D @96", "dynunet", {"num_classes": 4}, ("image", (1, 96, 96)), 8, False),
    ("unet3d @48^3", "unet3d", {"num_classes": 3}, ("image", (1, 48, 48, 48)), 2, False),
    ("resnet20 @32", "resnet20", {}, ("cls_image", (3, 32, 32)), 128, True),
    ("resnet32 @32", "resnet32", {}, ("cls_image", (3, 32, 32)), 128, False),
    ("resnet56 @32", "resnet56", {}, ("cls_image", (3, 32, 32)), 128, False),
    ("mlp 294-256-256-6", "mlp", {"in_channels": 294, "num_classes": 6}, ("feat", 294), 256, True),
    ("text_mlp 10k vocab (sparse 1%)", "text_mlp", {}, ("sparse", 10000), 128, True),
    ("text_bag 10k vocab, 256 tokens", "text_bag", {}, ("tokens", 256), 128, True),
]


def _build(reg_name: str, kwargs: dict):
    import calibrant  # noqa: F401
    from calibrant.registry import MODELS

    if reg_name == "peer:basicunet":
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=4)
    return MODELS.build(reg_name, **kwargs)


def _input(spec, batch: int, num_classes: int, gen):
    import torch

    kind, shape = spec
    if kind == "image":
        x = torch.randn(batch, *shape, generator=gen)
        y = torch.randint(0, num_classes, (batch, *shape[1:]), generator=gen)
        return x, y
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    if kind == "cls_image":
        return torch.randn(batch, *shape, generator=gen), y
    if kind == "feat":
        return torch.randn(batch, shape, generator=gen), y
    if kind == "sparse":
        dense = torch.rand(batch, shape, generator=gen)
        dense = dense * (torch.rand(batch, shape, generator=gen) < 0.01)
        return dense.to_sparse_csr(), y
    return torch.randint(1, 10000, (batch, shape), generator=gen), y


def run_one(index: int, repeats: int, warmup: int) -> dict:
    """Measure one case in this process; returns a JSON-able dict."""
    import torch
    import torch.nn.functional as F

    label, reg_name, kwargs, spec, batch, _ = CASES[index]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    model = _build(reg_name, kwargs)
    num_classes = 4 if reg_name.startswith("peer:") else model.num_classes
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    x, y = _input(spec, batch, num_classes, gen)
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()

    def fwd():
        with torch.no_grad():
            model(x)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    ftimes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fwd()
        ftimes.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    med, fmed = statistics.median(times), statistics.median(ftimes)
    dims = spec[1] if isinstance(spec[1], tuple) else (spec[1],)
    return {
        "label": label,
        "params": n_params,
        "batch": batch,
        "input": f"{batch} x {' x '.join(map(str, dims))}",
        "step_s": med,
        "step_spread": (min(times), max(times)),
        "train_sps": batch / med,
        "fwd_sps": batch / fmed,
        "peak_rss_mib": (rss1 - rss0) / 1024,  # ru_maxrss is KiB on Linux
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small cases only")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.repeats, args.warmup)))
        return

    rows = []
    for i, case in enumerate(CASES):
        if args.quick and not case[5]:
            continue
        cmd = [sys.executable, __file__, "--one", str(i), "--repeats", str(args.repeats)]
        cmd += ["--warmup", str(args.warmup)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode:
            raise SystemExit(f"case {case[0]!r} failed:\n{out.stderr}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{row['label']:34s} {row['params'] / 1e6:8.3f} M  train {row['train_sps']:9.1f}/s"
            f"  fwd {row['fwd_sps']:9.1f}/s  rss +{row['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    table = _table(rows, args)
    if not args.no_write:
        out_dir = ROOT / "benchmarks" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "models.md").write_text(table)
        doc = ROOT / "docs" / "models.md"
        text = doc.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            doc.write_text(head + start + "\n" + table + end + rest.split(end, 1)[1])


def _table(rows: list[dict], args) -> str:
    import torch

    load = os.getloadavg()
    cmd = "PYTHONPATH=src python benchmarks/bench_models.py" + (" --quick" if args.quick else "")
    if args.repeats != 5:
        cmd += f" --repeats {args.repeats}"
    lines = [
        f"Command: `{cmd}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}, {rows[0]['threads']} torch threads; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min).  ",
        "**Measured on a shared machine under load from other jobs: treat the figures as lower "
        "bounds and compare rows with each other, not with other machines.**  ",
        f"Train step = zero_grad + forward + cross-entropy + backward; median of {args.repeats} "
        f"timed steps after {args.warmup} warm-up; forward = no-grad forward, median of "
        f"{args.repeats}. Peak RSS = growth of the process's peak resident memory during the case "
        "(fresh subprocess per case).",
        "",
        "| model @ input | input (batch x ...) | parameters | train step (s) [min-max] "
        "| train samples/s | forward samples/s | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["step_spread"]
        lines.append(
            f"| {r['label']} | {r['input']} | {r['params']:,} | {r['step_s']:.3f} "
            f"[{lo:.3f}-{hi:.3f}] | {r['train_sps']:.1f} | {r['fwd_sps']:.1f} "
            f"| {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
