"""The ``calibrant`` command line: the only place that picks devices, seeds, paths and loggers.

Commands::

    calibrant train CONFIG [key=value ...] --out DIR      train (+ test evaluation and report)
    calibrant eval RUN [--checkpoint best|last] [--calibrator FILE]
    calibrant calibrate RUN [--method temperature]        fit a post-hoc calibrator on validation
    calibrant predict RUN --split test --out FILE         save test logits
    calibrant plot RUN                                    re-draw a run's figures
    calibrant compare RUN [RUN ...]                       side-by-side table of several runs
    calibrant data list | check                           datasets and the data root
    calibrant list [losses|alm|models|datasets|metrics|calibrators|configs|suites]
    calibrant bench SUITE [--profile cpu] [--tasks ..] [--methods ..] [--seeds ..]
                                                          run a paper's comparison, resumable

``torchrun --nproc-per-node N -m calibrant train ...`` trains with DDP (gloo on CPU, NCCL on GPU).

Example:
    >>> from calibrant.cli import main
    >>> main(["list", "configs"]) == 0  # doctest: +ELLIPSIS
    acdc_...acdc_ce...
    True
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("calibrant")

__all__ = ["main"]


def _setup_logging(quiet: bool, rank: int) -> None:
    level = logging.WARNING if quiet or rank != 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", force=True)


def _select_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def _init_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _load_run_config(args) -> dict[str, Any]:
    from calibrant.config import apply_overrides, load_config

    cfg = load_config(args.config)
    return apply_overrides(cfg, args.overrides)


class Progress:
    """One line per epoch (train loss, validation scores, ETA) and a throttled within-epoch line.

    ``step_done`` (the ``engine.fit(step_log=...)`` callback) prints ``step s/total, running
    loss, steps/s, epoch ETA`` at most every ``interval`` seconds: rewritten in place (carriage
    return) on a terminal, plain lines otherwise (logs, CI). ``quiet`` prints nothing.

    Args:
        epochs: total number of epochs (``None``: unknown, no ETA; the bench runs many runs).
        quiet: print nothing.
        stream: where to print (default ``sys.stderr``).
        interval: minimum seconds between two within-epoch lines (default 1 s on a terminal,
            30 s otherwise).
        clock: time source (for tests).
    """

    def __init__(
        self,
        epochs: int | None,
        *,
        quiet: bool = False,
        stream=None,
        interval: float | None = None,
        clock=time.perf_counter,
    ) -> None:
        self.epochs, self.quiet = epochs, quiet
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(callable(isatty) and isatty())
        self.interval = (1.0 if self.tty else 30.0) if interval is None else interval
        self.clock = clock
        self.start = clock()
        self.done = 0
        self._epoch_start = self.start
        self._first_step: int | None = None
        self._last_print = self.start
        self._pending = False  # a \r line waits to be cleared

    def step_done(self, step: int, total: int, loss) -> None:
        """Callback for ``engine.fit(step_log=...)``; reads ``loss`` only when it prints."""
        if self.quiet:
            return
        now = self.clock()
        if self._first_step is None:
            self._first_step = step - 1  # steps before this session (resumed mid-epoch)
        if now - self._last_print < self.interval or step >= total:
            return
        self._last_print = now
        rate = (step - self._first_step) / max(now - self._epoch_start, 1e-9)
        eta = (total - step) / max(rate, 1e-9)
        line = f"  step {step}/{total}  loss={float(loss):.4f}  {rate:.2f} step/s  eta {eta:.0f}s"
        if self.tty:
            print(f"\r\033[K{line}", end="", file=self.stream, flush=True)
            self._pending = True
        else:
            print(line, file=self.stream, flush=True)

    def epoch_done(self, record: Mapping[str, Any]) -> None:
        """Callback for ``engine.fit(log=...)``."""
        self.done += 1
        now = self.clock()
        self._epoch_start = self._last_print = now
        self._first_step = None
        if self.quiet:
            return
        elapsed = now - self.start
        if self.epochs is None:  # several runs of unknown length (the bench): no total, no ETA
            of, eta = "", ""
        else:
            left = elapsed / self.done * max(self.epochs - record["epoch"], 0)
            of, eta = f"/{self.epochs}", f"  eta {left:.0f}s"
        val = ", ".join(
            f"{k}={v:.4f}" for k, v in record["val"].items() if isinstance(v, (int, float))
        )
        clear = "\r\033[K" if self._pending else ""
        self._pending = False
        print(
            f"{clear}epoch {record['epoch']}{of}  "
            f"loss={record['train'].get('loss', math.nan):.4f}"
            f"  {val}  elapsed {elapsed:.0f}s{eta}",
            file=self.stream,
            flush=True,
        )


# ----------------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    """Train one run, evaluate its best checkpoint on the test split, write the report."""
    from calibrant import experiment, report

    cfg = _load_run_config(args)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _select_device(args.device, local_rank)
    rank, world = _init_distributed(device)
    _setup_logging(args.quiet, rank)
    train_cfg = cfg.setdefault("train", {})
    if args.seed is not None:
        train_cfg["seed"] = args.seed
    out = Path(args.out)
    progress = Progress(int(train_cfg.get("epochs", 1)), quiet=args.quiet or rank != 0)
    _, _, results = experiment.train_run(
        cfg,
        out,
        data_root=args.data_root,
        device=device,
        rank=rank,
        world_size=world,
        resume=args.resume,
        log=progress.epoch_done,
        step_log=progress.step_done,
        halt_after_step=args.halt_after_step,
    )
    if rank == 0 and not args.quiet:
        print(report.markdown_table({out.name: results["test"]}))
        print(f"report: {out / 'report.md'}  figures: {out / 'figures'}")
    return 0


def _load_run(args):
    """Rebuild the experiment of a finished run folder: ``(run, device, experiment)``."""
    from calibrant import experiment

    run = Path(args.run)
    config = run / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{str(config)!r} not found: is {str(run)!r} a calibrant run?")
    _setup_logging(getattr(args, "quiet", False), 0)
    device = _select_device(args.device, 0)
    cfg = json.loads(config.read_text())
    return run, device, experiment.build_experiment(cfg, data_root=args.data_root, device=device)


def cmd_eval(args) -> int:
    """Evaluate a trained run (optionally with a calibrator) and rewrite its report."""
    from calibrant import report

    run, device, exp = _load_run(args)
    results = report.evaluate_run(
        exp, run, device=device, checkpoint=args.checkpoint, calibrator=args.calibrator
    )
    report.write_results(run, results, exp)
    print(report.markdown_table({run.name: results["test"]}))
    return 0


def cmd_calibrate(args) -> int:
    """Fit a post-hoc calibrator on the validation logits of a run and report before/after."""
    from calibrant import report

    run, device, exp = _load_run(args)
    path = report.fit_calibrator(exp, run, method=args.method, device=device)
    before = report.evaluate_run(exp, run, device=device, checkpoint="best")
    after = report.evaluate_run(exp, run, device=device, checkpoint="best", calibrator=path)
    report.write_results(run, after, exp, name="metrics_calibrated.json")
    print(
        report.markdown_table({"before": before["test"], f"after ({args.method})": after["test"]})
    )
    print(f"calibrator: {path}")
    return 0


def cmd_predict(args) -> int:
    """Save the logits of a split (one tensor per item) to a file."""
    from calibrant import report

    run, device, exp = _load_run(args)
    path = report.save_predictions(exp, run, Path(args.out), split=args.split, device=device)
    print(f"predictions: {path}")
    return 0


def cmd_plot(args) -> int:
    """Re-draw a run's figures from its saved history and metrics."""
    from calibrant import report

    paths = report.plot_run(Path(args.run))
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_compare(args) -> int:
    """Print (and optionally save) a side-by-side table of several runs' test metrics."""
    from calibrant import report

    table = report.compare_runs([Path(r) for r in args.runs])
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


def cmd_data(args) -> int:
    """List registered datasets, or check which ones the data root holds."""
    from calibrant._paths import data_root
    from calibrant.registry import DATASETS

    if args.action == "list":
        for name in DATASETS.names():
            meta = DATASETS.meta(name)
            print(f"{name:20s} {meta.get('task', '')}")
        return 0
    root = data_root(args.data_root)
    status = 0
    for name in DATASETS.names():
        try:
            ds = DATASETS.build(name, root=root, split="train")
            print(f"ok       {name:20s} {len(ds)} training items")
        except (FileNotFoundError, ValueError, OSError) as e:
            status = 1
            print(f"missing  {name:20s} {e}")
    return status


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_bench(args) -> int:
    """Run the missing runs of a benchmark suite, then regenerate its results page."""
    from calibrant.bench import plan, render_suite, run_suite
    from calibrant.bench.runner import BenchFailures
    from calibrant.registry import SUITES

    _setup_logging(args.quiet, 0)
    suite = SUITES.build(args.suite)
    results, work = Path(args.results), Path(args.work)
    seeds = [int(s) for s in _csv(args.seeds)] if args.seeds else None
    selection = {"tasks": _csv(args.tasks), "methods": _csv(args.methods), "seeds": seeds}
    runs = plan(suite, results, args.profile, **selection)
    if args.dry_run:
        for r in runs:
            print(f"{r.state:5s} {r.task:12s} {r.method:16s} seed {r.seed}")
        return 0
    failed = None
    if not args.report_only:
        device = _select_device(args.device, 0)
        command = "calibrant " + " ".join(sys.argv[1:]) if args.command is None else args.command
        progress = None if args.quiet else Progress(None, stream=sys.stderr).epoch_done
        try:
            run_suite(
                suite,
                results=results,
                work=work,
                profile=args.profile,
                data_root=args.data_root,
                device=device,
                command=command,
                max_minutes=args.max_minutes,
                log_epoch=progress,
                **selection,
            )
        except BenchFailures as e:
            failed = e
    page = render_suite(suite, results, args.profile, figures=not args.no_figures)
    left = sum(not r.done for r in plan(suite, results, args.profile, **selection))
    print(f"results: {page} ({left} runs of this selection still to do)")
    if failed is not None:
        print(f"calibrant: error: {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_list(args) -> int:
    """Print registered names of one family (all families when none is given)."""
    import calibrant
    from calibrant.config import preset_names

    families = {
        "losses": calibrant.LOSSES,
        "alm": calibrant.ALM_PRESETS,
        "models": calibrant.MODELS,
        "datasets": calibrant.DATASETS,
        "metrics": calibrant.METRICS,
        "calibrators": calibrant.CALIBRATORS,
        "suites": calibrant.SUITES,
    }
    wanted = [args.family] if args.family else [*families, "configs"]
    for family in wanted:
        names = preset_names() if family == "configs" else families[family].names()
        if len(wanted) > 1:
            print(f"{family}:")
        print(("  " if len(wanted) > 1 else "") + " ".join(names))
    return 0


# ------------------------------------------------------------------------------------- parser


def _registered_summary() -> str:
    import calibrant

    return (
        f"losses: {' '.join(calibrant.LOSSES.names())}\n"
        f"ALM presets: {' '.join(calibrant.ALM_PRESETS.names())}\n"
        f"models: {' '.join(calibrant.MODELS.names())}\n"
        f"datasets: {' '.join(calibrant.DATASETS.names())}\n"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` lists the registered methods, models and datasets)."""
    parser = argparse.ArgumentParser(
        prog="calibrant",
        description="Train and evaluate calibrated networks.",
        epilog=_registered_summary(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, run_dir: bool = False):
        p.add_argument("--data-root", default=None, help="data folder (default: $CALIBRANT_DATA)")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda")
        p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
        p.add_argument(
            "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
        )
        if run_dir:
            p.add_argument("run", help="a run folder written by `calibrant train`")

    p = sub.add_parser(
        "train",
        help="train a run",
        epilog=_registered_summary(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="preset name (see `calibrant list configs`) or YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss=crac loss.margin=5")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--halt-after-step", type=int, default=None, help=argparse.SUPPRESS)
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run on its test split")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument(
        "--calibrator", default=None, help="a calibrator file from `calibrant calibrate`"
    )
    common(p, run_dir=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("calibrate", help="fit a post-hoc calibrator on the validation split")
    p.add_argument("--method", default="temperature", help="a registered calibrator")
    common(p, run_dir=True)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("predict", help="save logits of a split")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", required=True)
    common(p, run_dir=True)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plot", help="re-draw a run's figures")
    p.add_argument("run")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("compare", help="side-by-side table of runs")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default=None, help="also write the table to this file")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("data", help="list datasets or check the data root")
    p.add_argument("action", choices=("list", "check"))
    p.add_argument("--data-root", default=None)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("list", help="list registered names")
    p.add_argument(
        "family",
        nargs="?",
        choices=(
            "losses", "alm", "models", "datasets", "metrics", "calibrators", "configs", "suites"
        ),
    )  # fmt: skip
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "bench",
        help="reproduce a paper's comparison (resumable; writes docs/results/<suite>.md)",
    )
    p.add_argument("suite", help="a registered suite (see `calibrant list suites`)")
    p.add_argument("--profile", default="cpu", help="cpu (this machine) | paper (GPU)")
    p.add_argument("--results", default="docs/results", help="JSON records and results pages")
    p.add_argument("--work", default="runs/bench", help="scratch run folders (checkpoints)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks")
    p.add_argument("--methods", default=None, help="comma-separated subset of its methods")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 1..n)")
    p.add_argument("--max-minutes", type=float, default=None, help="start no run after this")
    p.add_argument("--report-only", action="store_true", help="only regenerate the page")
    p.add_argument("--no-figures", action="store_true", help="page without figures")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state")
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)
    common(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a usage or input error)."""
    from calibrant.checkpoint import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, CheckpointError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"calibrant: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
