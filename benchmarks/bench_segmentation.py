"""HD95 / HD / ASSD (and Dice) on a 128x256x256 volume with 4 classes: calibrant vs MONAI vs medpy.

Volumes. Ground truth and prediction are label maps built from noisy ellipsoids: class ``c`` is
``{x : ||(x - centre_c) / radii_c|| + a * n_c(x) < 1}`` painted in order (later classes overwrite
earlier ones, so nested structures work), where ``n_c`` is a smooth random field (Gaussian noise on
a grid 32x coarser, trilinearly upsampled) and ``a = 0.08``. The prediction uses shifted centres
(1-3 voxels), radii changed by a few percent and independent noise, so its surfaces are close to
but mostly not on the ground truth's, as for a decent segmentation model.

* ``organ``: a large organ (18 % of the volume) with a nested sub-structure (2 %) and a separate
  smaller organ (1 %), all well inside the volume.
* ``large``: objects filling most of the volume (class 1 about 45 %, touching the border) with
  two large nested structures.

Every measurement runs in a fresh subprocess: inputs are loaded, the peak RSS counter is reset
(``/proc/self/clear_refs``), one warm-up call runs (not for medpy), then ``repeats`` timed
calls; the median wall time, the median CPU time (``time.process_time``, all threads; with one
thread it is robust to other processes competing for the cores) and the peak RSS above the loaded
inputs are reported (pooled over the interleaved rounds). Speed ratios are given on both. MONAI
gets one-hot ``(1, 4, D, H, W)`` float tensors and medpy boolean masks per class (conversions not
timed); calibrant gets the int64 label maps (``pred_labels``), plus a row from float32 logits.
Each library computes its own convention: calibrant's ``directed_max`` rows are compared with
MONAI, ``pooled`` rows with medpy.

Usage::

    PYTHONPATH=src python benchmarks/bench_segmentation.py [--rounds 3] [--repeats 3]
        [--threads 1 2] [--medpy-repeats 3] [--skip-medpy]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SHAPE = (128, 256, 256)
NUM_CLASSES = 4
BANDWIDTH = 24e9  # bytes/s, measured read bandwidth of the reference machine (issue text)

SCENARIOS = {
    "organ": {
        "gt": [((64, 128, 128), (45, 90, 95)), ((64, 120, 135), (20, 40, 45)),
               ((64, 60, 200), (25, 35, 30))],
        "pred": [((65, 126, 130), (44, 92, 93)), ((63, 122, 133), (21, 38, 46)),
                 ((64, 62, 198), (24, 36, 31))],
    },
    "large": {
        "gt": [((64, 128, 128), (70, 140, 140)), ((64, 110, 110), (40, 80, 80)),
               ((64, 170, 180), (30, 50, 50))],
        "pred": [((66, 126, 130), (68, 143, 138)), ((63, 112, 108), (41, 78, 82)),
                 ((65, 168, 183), (29, 52, 49))],
    },
}  # fmt: skip


def make_labels(specs, seed: int, shape=SHAPE, amp: float = 0.08) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    lab = torch.zeros(shape, dtype=torch.int64)
    coarse = tuple(max(2, n // 32) for n in shape)
    for c, (centre, radii) in enumerate(specs, start=1):
        noise = torch.randn((1, 1, *coarse), generator=g)
        noise = F.interpolate(noise, size=shape, mode="trilinear", align_corners=True)[0, 0]
        r = sum(((a - c0) / rr) ** 2 for a, c0, rr in zip(axes, centre, radii, strict=True))
        lab[r.sqrt() + amp * noise < 1] = c
    return lab.numpy()


# ------------------------------------------------------------------------------------------
# Worker: one measurement in a fresh process
# ------------------------------------------------------------------------------------------
def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _callable(lib: str, metric: str, pred: np.ndarray, gt: np.ndarray):
    fg = range(1, NUM_CLASSES)
    if lib == "calibrant" or lib == "calibrant_logits":
        from calibrant.metrics.segmentation import segmentation_metrics

        G = torch.from_numpy(gt)[None]
        if lib == "calibrant_logits":
            g = torch.Generator().manual_seed(0)
            logits = F.one_hot(torch.from_numpy(pred), NUM_CLASSES).movedim(-1, 0)[None].float()
            logits += 0.1 * torch.rand(logits.shape, generator=g)
            kw = dict(logits=logits)
        else:
            kw = dict(logits=None, pred_labels=torch.from_numpy(pred)[None])
        name, _, mode = metric.partition(":")
        metrics = ["dice", "iou", "hd", "hd95", "assd"] if name == "all" else [name]
        opts = dict(percentile_mode=mode or "directed_max", num_classes=NUM_CLASSES)
        return lambda: segmentation_metrics(target=G, metrics=metrics, **kw, **opts)
    if lib == "monai":
        from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

        P = F.one_hot(torch.from_numpy(pred), NUM_CLASSES).movedim(-1, 0)[None].float()
        Gm = F.one_hot(torch.from_numpy(gt), NUM_CLASSES).movedim(-1, 0)[None].float()
        if metric == "hd95":
            return lambda: compute_hausdorff_distance(P, Gm, percentile=95)
        if metric == "hd":
            return lambda: compute_hausdorff_distance(P, Gm)
        return lambda: compute_average_surface_distance(P, Gm, symmetric=True)
    if lib == "medpy":
        from medpy.metric import binary

        masks = [(pred == c, gt == c) for c in fg]
        fn = {"hd95": binary.hd95, "hd": binary.hd, "assd": binary.assd}[metric]
        return lambda: [fn(p, g) for p, g in masks]
    raise ValueError(lib)


def worker(lib: str, metric: str, data: str, repeats: int, threads: int) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)  # same budget for every library
    z = np.load(data)
    fn = _callable(lib, metric, z["pred"], z["gt"])
    base = _rss("VmRSS:")
    _reset_peak()
    if lib != "medpy":  # medpy is plain NumPy/SciPy: nothing to warm up, and a call takes ~10 s
        fn()  # warm-up (imports, allocator)
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    peak = _rss("VmHWM:") - base
    print(json.dumps({"times": times, "cpu": cpu, "peak_bytes": peak}))


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------
def run_one(lib, metric, data, repeats, threads) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", lib, metric, data, str(repeats), str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _merge(parts: list[dict]) -> dict:
    """Pool the timed calls of several subprocesses (rounds) of one measurement."""
    res = {
        "times": [t for p in parts for t in p["times"]],
        "cpu": [t for p in parts for t in p["cpu"]],
        "peak_bytes": max(p["peak_bytes"] for p in parts),
    }
    res["median"] = statistics.median(res["times"])
    res["cpu_median"] = statistics.median(res["cpu"])
    return res


def check_values(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Max |calibrant - peer| over the foreground classes, each under the peer's convention."""
    from medpy.metric import binary
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
    from monai.metrics.utils import get_edge_surface_distance

    from calibrant.metrics.segmentation import segmentation_metrics

    warnings.filterwarnings("ignore")
    P = F.one_hot(torch.from_numpy(pred), NUM_CLASSES).movedim(-1, 0)[None].float()
    G = F.one_hot(torch.from_numpy(gt), NUM_CLASSES).movedim(-1, 0)[None].float()
    kw = dict(pred_labels=torch.from_numpy(pred)[None], num_classes=NUM_CLASSES)
    t = torch.from_numpy(gt)[None]
    dm = segmentation_metrics(None, t, percentile_mode="directed_max", **kw)
    po = segmentation_metrics(None, t, percentile_mode="pooled", **kw)
    diffs = {
        "MONAI hd95 (float32 quantile)": (
            dm["hd95"][0, 1:] - compute_hausdorff_distance(P, G, percentile=95)[0].double()
        ),
        "MONAI hd": dm["hd"][0, 1:] - compute_hausdorff_distance(P, G)[0].double(),
        "MONAI assd": dm["assd"][0, 1:]
        - compute_average_surface_distance(P, G, symmetric=True)[0].double(),
    }
    # MONAI's own edge distances, quantiled in float64 (removes its float32 interpolation error)
    ref = []
    for c in range(1, NUM_CLASSES):
        _, d, _ = get_edge_surface_distance(P[0, c], G[0, c], symmetric=True)
        ref.append(max(torch.quantile(x.double(), 0.95) for x in d))
    diffs["MONAI hd95 (its distances, float64 quantile)"] = dm["hd95"][0, 1:] - torch.stack(ref)
    med = {k: [] for k in ("hd95", "hd", "assd")}
    for c in range(1, NUM_CLASSES):
        p, g = pred == c, gt == c
        med["hd95"].append(binary.hd95(p, g))
        med["hd"].append(binary.hd(p, g))
        med["assd"].append(binary.assd(p, g))
    for k, v in med.items():
        diffs[f"medpy {k}"] = po[k][0, 1:] - torch.tensor(v, dtype=torch.float64)
    return {k: float(v.abs().max()) for k, v in diffs.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per subprocess")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved subprocess rounds")
    ap.add_argument("--medpy-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-medpy", action="store_true")
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "segmentation.md"))
    args = ap.parse_args()

    # calibrant and MONAI alternate, so load changes on the shared machine hit both alike
    runs = [
        ("calibrant", "hd95:directed_max"),
        ("monai", "hd95"),
        ("calibrant", "hd95:pooled"),
        ("calibrant", "hd"),
        ("monai", "hd"),
        ("calibrant", "assd"),
        ("monai", "assd"),
        ("calibrant", "all"),
        ("calibrant_logits", "all"),
    ]
    medpy_runs = [] if args.skip_medpy else [("medpy", m) for m in ("hd95", "hd", "assd")]
    lines = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for scen in args.scenarios:
            spec = SCENARIOS[scen]
            gt = make_labels(spec["gt"], 0)
            pred = make_labels(spec["pred"], 1)
            data = os.path.join(tmp, f"{scen}.npz")
            np.savez(data, pred=pred, gt=gt)
            frac = [float((gt == c).mean()) for c in range(NUM_CLASSES)]
            from calibrant.metrics._surface import label_surface

            surf = label_surface(gt)
            nsurf = [int((surf & (gt == c)).sum()) for c in range(1, NUM_CLASSES)]
            medp = {}
            for lib, metric in medpy_runs:  # plain NumPy/SciPy, single-threaded: once
                medp[(lib, metric)] = _merge([run_one(lib, metric, data, args.medpy_repeats, 1)])
            diffs = check_values(pred, gt)
            for threads in args.threads:
                parts = {key: [] for key in runs}
                for _ in range(args.rounds):
                    for lib, metric in runs:
                        parts[(lib, metric)].append(
                            run_one(lib, metric, data, args.repeats, threads)
                        )
                res = {key: _merge(p) for key, p in parts.items()}
                for (lib, metric), r in res.items():
                    print(scen, threads, lib, metric, f"{r['median']:.3f}s {r['cpu_median']:.3f}s")
                res.update(medp)
                lines += _table(scen, threads, frac, nsurf, res, diffs, args)
    header = _header(args, load, os.getloadavg())
    Path(args.out).write_text("\n".join(header + lines) + "\n")
    print("\n".join(header + lines))


def _ratio(a, b):
    return f"{b / a:.1f}x"


def _table(scen, threads, frac, nsurf, res, diffs, args):
    mono = {m: res[("monai", m)] for m in ("hd95", "hd", "assd")}
    medp = {m: res[("medpy", m)] for m in ("hd95", "hd", "assd") if ("medpy", m) in res}
    vox = int(np.prod(SHAPE))
    out = [
        f"## Scenario `{scen}`, {threads} thread(s) (`torch.set_num_threads`, OMP)",
        "",
        "Class fractions of the volume (gt): "
        + ", ".join(f"{c}: {f:.1%}" for c, f in enumerate(frac))
        + f"; gt surface voxels of classes 1-3: {nsurf}.",
        "",
        "| library | metric | median wall s | median CPU s | repeats | peak extra RSS MiB "
        "| vs MONAI (wall / CPU) | vs medpy (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (lib, metric), r in res.items():
        base = metric.split(":")[0]
        vm = vp = ""
        if lib.startswith("cal"):
            peers_m = list(mono.values()) if base == "all" else [mono[base]]
            peers_p = list(medp.values()) if base == "all" else [medp.get(base)]
            note = " (vs sum of hd95+hd+assd)" if base == "all" else ""
            vm = (
                _ratio(r["median"], sum(p["median"] for p in peers_m))
                + " / "
                + _ratio(r["cpu_median"], sum(p["cpu_median"] for p in peers_m))
                + note
            )
            if len(medp) == 3:
                vp = (
                    _ratio(r["median"], sum(p["median"] for p in peers_p))
                    + " / "
                    + _ratio(r["cpu_median"], sum(p["cpu_median"] for p in peers_p))
                    + note
                )
        out.append(
            f"| {lib} | {metric} | {r['median']:.3f} | {r['cpu_median']:.3f} | "
            f"{len(r['times'])} | {r['peak_bytes'] / 2**20:.0f} | {vm} | {vp} |"
        )
    out += [
        "",
        "Memory-bandwidth floor at 24 GB/s: two int64 label maps "
        f"({2 * vox * 8 / 2**20:.0f} MiB) {2 * vox * 8 / BANDWIDTH * 1e3:.1f} ms; compact int8 "
        f"maps {2 * vox / BANDWIDTH * 1e3:.2f} ms; float32 logits + int64 target "
        f"{vox * (4 * NUM_CLASSES + 8) / BANDWIDTH * 1e3:.1f} ms. calibrant hd95 is "
        f"{res[('calibrant', 'hd95:directed_max')]['cpu_median'] / (2 * vox * 8 / BANDWIDTH):.0f}x "
        "the int64 floor: the time goes to the nearest-neighbour search over surface points "
        "(gathers of the row-distance disk search, a few k-d tree queries), which is bound by "
        "random access and per-call overhead, not by reading the volume.",
        "",
        "Max |calibrant - peer| over classes 1-3, each under the peer's convention:",
        "",
    ]
    out += [f"- {k}: {v:.2e}" for k, v in diffs.items()]
    out.append("")
    return out


def _header(args, load, load_end):
    cmd = "PYTHONPATH=src python benchmarks/bench_segmentation.py " + " ".join(sys.argv[1:])
    return [
        "# Segmentation distance metrics: calibrant vs MONAI vs medpy",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"load average (1/5/15 min) at start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, at end "
        f"{load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f} (the machine is shared by other "
        "agents, so absolute times are noisy; the ratios come from the same run). "
        f"Volume {SHAPE}, {NUM_CLASSES} classes (metrics over classes 1-3), unit spacing. "
        f"calibrant and MONAI: {args.rounds} interleaved rounds (calibrant and MONAI "
        f"subprocesses alternate), each a fresh subprocess with one warm-up and {args.repeats} "
        f"timed calls; the median is over all {args.rounds * args.repeats} timed calls. medpy "
        f"(about 10 s per call on a quiet machine): one single-threaded subprocess, "
        f"{args.medpy_repeats} timed calls, no warm-up. Thread counts per table heading "
        "(calibrant runs its per-class directed searches on `torch.get_num_threads()` threads; "
        "MONAI's torch ops use the same count). CPU time is `time.process_time` (all threads); "
        "with 1 thread it is robust to competing processes. Peak extra RSS is VmHWM "
        "after reset minus the RSS with the inputs loaded. Volumes are described in the script "
        "docstring. Inputs: calibrant gets int64 label maps (`calibrant` rows) or float32 logits "
        "(`calibrant_logits`, argmax included in the time); MONAI gets ready-made one-hot float "
        "tensors and medpy boolean masks per class (their conversions are not timed). `all` = "
        "Dice, IoU, HD, HD95 and ASSD from one call, compared with the sum of the three peer "
        "calls. Speed target of the issue: HD95/HD/ASSD >= 3x faster than MONAI.",
        "",
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
