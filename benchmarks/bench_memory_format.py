"""Train-step CPU time of the bench suites' UNets, contiguous vs channels-last weights.

The two UNets of the segmentation presets, at their preset sizes: ``unet3d`` of
``hippocampus_ce`` (8 base channels, depth 3, batch 8 of 32³ patches) and ``unet2d`` of
``acdc_ce`` (16 base channels, depth 4, batch 16 of 96×96 slices). A step is zero_grad +
forward + cross-entropy + backward. Both layouts run in the same process, interleaved
(contiguous, channels-last, contiguous, ...), each timed with the thread's CPU time
(``time.thread_time``, steadier than the wall clock on a shared machine); the figure is the median
per layout and the ratio contiguous / channels-last (> 1: channels-last is faster).

Usage:
    PYTHONPATH=src python benchmarks/bench_memory_format.py --repeats 7 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from calibrant.models import to_channels_last
from calibrant.registry import MODELS

CASES = {  # name: (registry name, build kwargs, input shape, classes)
    "unet3d (hippocampus_ce)": ("unet3d", dict(base_channels=8, depth=3), (8, 1, 32, 32, 32), 3),
    "unet2d (acdc_ce)": ("unet2d", dict(base_channels=16, depth=4), (16, 1, 96, 96), 4),
}


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.thread_time()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return time.thread_time() - start


def measure(repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    for label, (name, kw, shape, classes) in CASES.items():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(*shape, generator=gen)
        y = torch.randint(0, classes, (shape[0], *shape[2:]), generator=gen)
        dense = MODELS.build(name, in_channels=1, num_classes=classes, norm="batch", **kw)
        nhwc = MODELS.build(name, in_channels=1, num_classes=classes, norm="batch", **kw)
        nhwc.load_state_dict(dense.state_dict())
        to_channels_last(nhwc)
        times = {"contiguous": [], "channels-last": []}
        for model in (dense, nhwc):  # warm-up
            _step(model, x, y)
        for _ in range(repeats):
            times["contiguous"].append(_step(dense, x, y))
            times["channels-last"].append(_step(nhwc, x, y))
        rows.append(
            (
                label,
                statistics.median(times["contiguous"]),
                statistics.median(times["channels-last"]),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.repeats)
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}; median of "
        f"{args.repeats} interleaved steps, thread CPU time.\n"
    )
    print("| model (preset) | contiguous (s) | channels-last (s) | ratio |")
    print("|---|---:|---:|---:|")
    for label, dense, nhwc in rows:
        print(f"| {label} | {dense:.3f} | {nhwc:.3f} | {dense / nhwc:.2f}× |")


if __name__ == "__main__":
    main()
