"""Forward+backward time and peak memory of the calibration losses vs plain CE and MONAI NACL.

Each (loss, shape) runs in a fresh subprocess: peak memory is the growth of the process's
maximum RSS during one forward+backward (inputs already allocated, so it counts only what the
loss itself allocates), then the time is the median of ``--repeats`` timed runs after warm-up.

Usage:
    PYTHONPATH=src python benchmarks/bench_losses.py --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

SHAPES = {"2d": (8, 4, 192, 192), "3d": (2, 14, 96, 96, 96)}
LOSSES = [
    "plain_ce",  # F.cross_entropy, the reference
    "ce",
    "mbls",
    "svls",
    "nacl",
    "monai_nacl",
    "crac_region",  # only if the ALM engineer's preset is registered
]


def _build(name: str, dims: int):
    import torch.nn.functional as F

    from calibrant.registry import LOSSES as REG

    if name == "plain_ce":
        return F.cross_entropy
    if name == "monai_nacl":
        from monai.losses import NACLLoss

        return NACLLoss(classes=SHAPES[f"{dims}d"][1], dim=dims)
    if name == "crac_region":
        for key in ("crac", "crac_region"):
            if key in REG:
                return REG.build(key)
        return None
    return REG.build(name)


def child(name: str, shape_key: str, repeats: int) -> dict:
    import resource

    import torch

    torch.manual_seed(0)
    shape = SHAPES[shape_key]
    loss = _build(name, len(shape) - 2)
    if loss is None:
        return {"name": name, "shape": shape_key, "missing": True}
    logits = torch.randn(shape, requires_grad=True)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]))

    def step():
        logits.grad = None
        loss(logits, target).backward()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "name": name,
        "shape": shape_key,
        "median_s": times[len(times) // 2],
        "peak_mib": peak_kib / 1024,
        "logits_mib": logits.numel() * 4 / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/losses.md")
    ap.add_argument("--shapes", default="2d,3d")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.repeats)))
        return
    rows = []
    for shape_key in args.shapes.split(","):
        for name in LOSSES:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    shape_key,
                    "--repeats",
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
                check=True,
                env=os.environ,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    lines = [
        "| shape | loss | median fwd+bwd (ms) | × plain CE | peak extra RSS (MiB) | × plain CE |",
        "|---|---|---|---|---|---|",
    ]
    for shape_key in args.shapes.split(","):
        base = next(r for r in rows if r["shape"] == shape_key and r["name"] == "plain_ce")
        for r in rows:
            if r["shape"] != shape_key:
                continue
            if r.get("missing"):
                lines.append(f"| {shape_key} | {r['name']} | not registered | | | |")
                continue
            lines.append(
                f"| {shape_key} {SHAPES[shape_key]} | {r['name']} | {1e3 * r['median_s']:.1f} | "
                f"{r['median_s'] / base['median_s']:.2f} | {r['peak_mib']:.0f} | "
                f"{r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f} |"
            )
    import torch

    header = (
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}.\n"
    )
    print(header + "\n".join(lines))
    if args.out:
        with open(args.out + ".table", "w") as f:  # the .md wraps this table with the caveats
            f.write(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
