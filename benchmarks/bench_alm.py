"""Benchmark of the ALM machinery (issue 4).

1. ``observe`` + ``step`` over a validation set versus the plain validation pass (a small
   UNet-like conv net at 4x1x192x192, 4 classes); bound: <= 5 % extra.
2. The CRaC training penalty forward+backward versus plain CE forward+backward on logits
   8x4x192x192; bound: <= 2x. Peers in the same run: MONAI ``NACLLoss`` (the fixed-λ special
   case) against our ``nacl`` preset, and a re-implementation of the research code's
   unfold-based CRaC penalty (written from METHODS.md §2.9, not copied) to show where the
   papers' 18x comes from.

Each measurement runs in a fresh subprocess: median of >= 5 repeats after warm-up, and the peak
RSS increase over the process's RSS before the measurement (``ru_maxrss``).

    PYTHONPATH=src python benchmarks/bench_alm.py [--repeats 7] [--threads 2] [--device cpu]
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

import torch
import torch.nn.functional as F
from torch import nn

K = 4
RESULTS = Path(__file__).resolve().parent / "results" / "alm.md"


class TinyUNet(nn.Module):
    """3-level UNet-like conv net (16-32-64 channels), the validation workload."""

    def __init__(self, cin=1, k=K, c=16):
        super().__init__()

        def block(a, b):
            return nn.Sequential(
                nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU()
            )

        self.e1, self.e2, self.e3 = block(cin, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.d2, self.d1 = block(6 * c, 2 * c), block(3 * c, c)
        self.out = nn.Conv2d(c, k, 1)

    def forward(self, x):
        e1 = self.e1(x)
        e2 = self.e2(F.max_pool2d(e1, 2))
        e3 = self.e3(F.max_pool2d(e2, 2))
        d2 = self.d2(torch.cat([F.interpolate(e3, scale_factor=2.0), e2], 1))
        d1 = self.d1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.out(d1)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _time(fn, repeats, device, warmup=2, baseline=None):
    """Median time of ``fn``; with ``baseline``, the two alternate (load drift cancels)."""
    fns = [fn] if baseline is None else [baseline, fn]
    for _ in range(warmup):
        for f in fns:
            f()
    _sync(device)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for f, t in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            f()
            _sync(device)
            t.append(time.perf_counter() - t0)
    return [(statistics.median(t), min(t)) for t in times]


def _seg_target(b, h, w, device, g):
    y = torch.randint(0, K, (b, h // 8, w // 8), generator=g)
    return y.repeat_interleave(8, 1).repeat_interleave(8, 2).to(device)


def research_crac_penalty(logits, target, lam, rho, margin=5.0):
    """The research code's computation (METHODS.md §2.9): unfold, deviation test, hcat."""
    b, k, h, w = logits.shape
    lab = F.pad(target.float().unsqueeze(1), (1, 1, 1, 1))
    patches = F.unfold(lab, 3).view(b, 9, h, w)
    onehot = F.one_hot(patches.long(), k).float()  # (B, 9, H, W, K)
    tau = onehot.mean(1)  # (B, H, W, K)
    dev = (patches - patches.mean(1, keepdim=True)).sum(1)  # float artefact of the code (B1)
    outer = (dev != 0).unsqueeze(-1).float()
    x = logits.permute(0, 2, 3, 1)
    h_in = (margin * tau - x).abs() * (1 - outer)
    h_out = (tau - x).abs() * outer
    hcat = torch.cat([h_out, h_in], -1)  # (B, H, W, 2K), code order [outer, inner]
    z = lam + rho * hcat
    p = (torch.clamp_min(z, 0) ** 2 - lam**2) / (2 * rho)
    return p.mean()


def measure(name, repeats, device):
    from calibrant.registry import LOSSES

    g = torch.Generator().manual_seed(0)
    rss0 = _rss_mb()
    if name.startswith("val"):
        model = TinyUNet().to(device).eval()
        xs = [torch.randn(4, 1, 192, 192, generator=g).to(device) for _ in range(5)]
        ys = [_seg_target(4, 192, 192, device, g) for _ in range(5)]
        alm = LOSSES.build("crac", num_classes=K, with_ce=False).to(device)

        observe_times = []  # observe + step time inside each observed pass, timed directly

        def make(observe):
            def run():
                spent = 0.0
                with torch.no_grad():
                    for x, y in zip(xs, ys, strict=True):
                        out = model(x)
                        if observe:
                            _sync(device)
                            t0 = time.perf_counter()
                            alm.observe(out, y)
                            _sync(device)
                            spent += time.perf_counter() - t0
                    if observe:
                        t0 = time.perf_counter()
                        alm.step()
                        _sync(device)
                        observe_times.append(spent + time.perf_counter() - t0)

            return run

        run, base = make(name == "val+observe"), make(False)

    else:
        logits = torch.randn(8, K, 192, 192, generator=g).to(device).requires_grad_()
        y = _seg_target(8, 192, 192, device, g)
        if name == "ce":

            def loss():
                return F.cross_entropy(logits, y)

        elif name in ("crac", "crac_novalidate"):
            alm = LOSSES.build("crac", num_classes=K, with_ce=False, validate=name == "crac").to(
                device
            )
            alm.lam.fill_(0.5)

            def loss():
                return alm(logits, y)

        elif name == "crac_research_code":
            lam = torch.full((2 * K,), 0.5, device=device)
            rho = torch.full((2 * K,), 0.1, device=device)

            def loss():
                return research_crac_penalty(logits, y, lam, rho)

        elif name == "nacl_calibrant":
            crit = LOSSES.build("nacl", padding="zeros").to(device)

            def loss():
                return crit(logits, y)

        elif name == "nacl_monai":
            from monai.losses import NACLLoss

            crit = NACLLoss(classes=K, dim=2, kernel_size=3, alpha=0.1).to(device)

            def loss():
                return crit(logits, y)

        else:
            raise ValueError(name)

        def run():
            logits.grad = None
            loss().backward()

        def base():
            logits.grad = None
            F.cross_entropy(logits, y).backward()

    (sec, sec_min), (base_sec, base_min) = _time(run, repeats, device, baseline=base)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    extra = {}
    if name == "val+observe":  # observe+step timed inside the pass / the plain pass
        obs = statistics.median(observe_times[-repeats:])
        extra = {"observe_sec": obs, "observe_share": obs / base_sec}
    return {
        **extra,
        "name": name,
        "sec": sec,
        "baseline_sec": base_sec,
        "ratio": sec / base_sec,
        "ratio_of_min": sec_min / base_min,
        "peak_rss_mb": peak,
        "gpu_peak_mb": gpu_peak,
    }


NAMES = [
    "val+observe",
    "ce",
    "crac",
    "crac_novalidate",
    "crac_research_code",
    "nacl_calibrant",
    "nacl_monai",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--names", default=",".join(NAMES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(measure(args.one, args.repeats, device)))
        return
    rows = {}
    for name in args.names.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--repeats", str(args.repeats)]
        cmd += ["--threads", str(args.threads), "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
        print(rows[name], flush=True)
    spec = [
        ("observe+step overhead on the validation pass", "val+observe", "ratio", -1),
        ("observe+step overhead, ratio of minima", "val+observe", "ratio_of_min", -1),
        (
            "observe+step overhead, timed directly (median observe+step / median plain pass)",
            "val+observe",
            "observe_share",
            0,
        ),
        ("CRaC penalty / CE (fwd+bwd)", "crac", "ratio", 0),
        ("CRaC penalty / CE, ratio of minima", "crac", "ratio_of_min", 0),
        ("CRaC penalty, validate=False / CE", "crac_novalidate", "ratio", 0),
        ("research-code CRaC penalty / CE", "crac_research_code", "ratio", 0),
        ("calibrant nacl (CE + term) / CE", "nacl_calibrant", "ratio", 0),
        ("MONAI NACLLoss (CE + term) / CE", "nacl_monai", "ratio", 0),
    ]
    ratio = {label: rows[n][key] + add for label, n, key, add in spec if n in rows}
    print(json.dumps(ratio, indent=1))
    write(rows, ratio, args)


def write(rows, ratio, args):
    dev = args.device
    if dev == "cpu":
        dev_desc = f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    else:
        dev_desc = torch.cuda.get_device_name(0)
    lines = [
        f"### Run: {dev_desc}, torch {torch.__version__}, median of {args.repeats} after warm-up",
        "",
        "Command: `PYTHONPATH=src python benchmarks/bench_alm.py "
        f"--repeats {args.repeats} --threads {args.threads} --device {args.device}"
        + ("" if args.names == ",".join(NAMES) else f" --names {args.names}")
        + "`",
        "",
        "Each row is timed alternately with its baseline in the same process (the validation",
        "pass without observe, or CE forward+backward on the same logits).",
        "",
        "| measurement | median (ms) | baseline median (ms) | ratio of medians | ratio of minima "
        "| peak RSS increase (MiB) | GPU peak (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        gpu = "-" if r["gpu_peak_mb"] is None else f"{r['gpu_peak_mb']:.0f}"
        lines.append(
            f"| {r['name']} | {1000 * r['sec']:.1f} | {1000 * r['baseline_sec']:.1f} "
            f"| {r['ratio']:.2f} | {r['ratio_of_min']:.2f} | {r['peak_rss_mb']:.0f} | {gpu} |"
        )
    lines += ["", "| ratio | value |", "|---|---|"]
    for k, v in ratio.items():
        lines.append(f"| {k} | {100 * v:.1f} % |" if "overhead" in k else f"| {k} | {v:.2f}x |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write("\n" + text)


if __name__ == "__main__":
    main()
