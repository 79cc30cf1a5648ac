"""Full UNet training step (forward, loss, backward, SGD step) with each loss vs plain CE.

Model: ``MODELS.build("unet2d", in_channels=1, num_classes=4)`` with its defaults; batch 8,
1x192x192 input, 4 classes. Each loss runs in a fresh subprocess, its step alternating with a
plain ``F.cross_entropy`` step on the same model and batch (load drift hits both alike); the
bound of issue 3 is <= 10 % extra over the CE step.

    PYTHONPATH=src python benchmarks/bench_train_step.py --repeats 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LOSSES = ["ce", "mbls", "svls", "nacl", "crac"]


def child(name: str, repeats: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from calibrant.registry import LOSSES, MODELS

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MODELS.build("unet2d", in_channels=1, num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(8, 1, 192, 192)
    y = torch.randint(0, 4, (8, 192, 192))
    loss = LOSSES.build("crac", num_classes=4) if name == "crac" else LOSSES.build(name)

    def step(fn):
        opt.zero_grad(set_to_none=True)
        fn(model(x), y).backward()
        opt.step()

    step(loss)
    step(F.cross_entropy)
    t_loss, t_ce = [], []
    for _ in range(repeats):
        for fn, out in ((F.cross_entropy, t_ce), (loss, t_loss)):
            t0 = time.perf_counter()
            step(fn)
            out.append(time.perf_counter() - t0)
    return {
        "name": name,
        "step_s": statistics.median(t_loss),
        "ce_step_s": statistics.median(t_ce),
        "extra": statistics.median(t_loss) / statistics.median(t_ce) - 1,
        "extra_of_min": min(t_loss) / min(t_ce) - 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--out", default="benchmarks/results/train_step.md.table")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.repeats, args.threads)))
        return
    lines = [
        f"threads {args.threads}, repeats {args.repeats} (alternating with the CE step)",
        "",
        "| loss | median step (ms) | CE step median (ms) | extra (medians) | extra (minima) |",
        "|---|---|---|---|---|",
    ]
    for name in args.losses.split(","):
        cmd = [sys.executable, __file__, "--child", name, "--repeats", str(args.repeats)]
        cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(r, file=sys.stderr)
        lines.append(
            f"| {name} | {1e3 * r['step_s']:.0f} | {1e3 * r['ce_step_s']:.0f} | "
            f"{100 * r['extra']:+.1f} % | {100 * r['extra_of_min']:+.1f} % |"
        )
    lines.append(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
