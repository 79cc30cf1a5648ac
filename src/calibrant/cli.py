"""The ``calibrant`` command line: the only place that picks devices, seeds, paths and loggers.

Why this file is long: it is the whole command line (nine commands' parsing, messages, exit codes).

Commands::

    calibrant train CONFIG --out DIR [key=value ...]      train (+ test evaluation and report)
    calibrant eval RUN [--checkpoint best|last] [--calibrator FILE]
                                                          writes RUN/evaluations/NAME.json
    calibrant calibrate RUN [--method temperature]        fit a post-hoc calibrator on validation
    calibrant predict RUN --split test --out FILE         save test logits
    calibrant plot RUN                                    re-draw a run's figures
    calibrant compare RUN [RUN ...]                       side-by-side table of several runs
    calibrant data list | check [NAME ...] [--deep]       datasets: ok, missing or unreadable
    calibrant list [losses|alm|models|datasets|metrics|calibrators|configs|suites|keys]
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
import contextlib
import json
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from tqdm.contrib.logging import logging_redirect_tqdm

import calibrant
from calibrant import _extras
from calibrant._paths import data_root
from calibrant.checkpoint import CheckpointError
from calibrant.config import apply_overrides, load_config, preset_names
from calibrant.data.base import DataFileError
from calibrant.progress import Progress
from calibrant.registry import DATASETS, SUITES

# The commands import config_schema, experiment, report, runlog and bench inside their functions,
# for start-up speed only (each 15-125 ms): `calibrant --help` and `calibrant list` load none.

log = logging.getLogger("calibrant")

# commands that read datasets, draw figures or write TensorBoard files: `calibrant[cli]`
_NEEDS_CLI_EXTRA = frozenset({"train", "eval", "calibrate", "predict", "plot", "bench"})

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
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _load_run_config(args) -> dict[str, Any]:
    """The preset or file ``args.config`` with the overrides and ``--seed``, validated.

    Every key and value is checked (:func:`calibrant.config_schema.validate_config`) before
    anything is written: a misspelt key or a wrong value is a ``ConfigError`` (exit code 2).
    """
    from calibrant.config_schema import validate_config

    cfg = apply_overrides(load_config(args.config), args.overrides)
    if getattr(args, "seed", None) is not None:
        cfg.setdefault("train", {})["seed"] = args.seed
    validate_config(cfg)
    return cfg


def _print_config(cfg: dict[str, Any]) -> None:
    """``train --dry-run``: the resolved config as YAML; nothing is written or built."""
    print(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None).rstrip())
    print("# config valid (dry run: nothing written)", file=sys.stderr)


def _progress_output(progress: Progress):
    """Route log lines through tqdm while bars are drawn on a terminal (else a no-op)."""
    if progress.tty and not progress.quiet:
        return logging_redirect_tqdm()
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    """Train one run, evaluate its best checkpoint on the test split, write the report."""
    from calibrant import experiment, report
    from calibrant.runlog import RunLogger

    cfg = _load_run_config(args)
    if args.dry_run:
        _print_config(cfg)
        return 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _select_device(args.device, local_rank)
    rank, world = _init_distributed(device)
    _setup_logging(args.quiet, rank)
    train_cfg = cfg.setdefault("train", {})
    if args.seed is not None:
        train_cfg["seed"] = args.seed
    out = Path(args.out)
    progress = Progress(
        int(train_cfg.get("epochs", 1)), quiet=args.quiet or rank != 0, resumed=args.resume
    )
    logger = RunLogger(out, args.logger, rank=rank, resume=args.resume)
    try:
        with _progress_output(progress):
            _, _, results = experiment.train_run(
                cfg,
                out,
                data_root=args.data_root,
                device=device,
                rank=rank,
                world_size=world,
                resume=args.resume,
                overwrite=args.overwrite,
                callbacks=[progress, logger],
            )
        if world > 1:  # no rank tears the group down while another still talks to it
            dist.barrier()
    finally:
        progress.close()
        logger.close()
        if world > 1:  # gloo's threads must not outlive the process group at interpreter exit
            dist.destroy_process_group()
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
    """Evaluate a checkpoint of a run (optionally with a calibrator) on the test split.

    The result goes to ``RUN/evaluations/<checkpoint>[+<calibrator>].json``, beside the
    training's ``metrics.json`` (never over it), and ``report.md`` lists every evaluation.
    """
    from calibrant import report

    run, device, exp = _load_run(args)
    progress = Progress(None, quiet=args.quiet)
    try:
        with _progress_output(progress):
            results = report.evaluate_run(
                exp,
                run,
                device=device,
                checkpoint=args.checkpoint,
                calibrator=args.calibrator,
                callbacks=[progress],
            )
    finally:
        progress.close()
    path = report.write_evaluation(run, results)
    name = path.stem
    print(report.markdown_table({name: results["test"]}))
    print(f"evaluation: {path}  report: {run / 'report.md'}")
    return 0


def cmd_calibrate(args) -> int:
    """Fit a post-hoc calibrator on the validation logits of a run and report before/after."""
    from calibrant import report

    run, device, exp = _load_run(args)
    path = report.fit_calibrator(exp, run, method=args.method, device=device)
    before = report.evaluate_run(exp, run, device=device, checkpoint="best")
    after = report.evaluate_run(exp, run, device=device, checkpoint="best", calibrator=path)
    evaluation = report.write_evaluation(run, after)
    print(
        report.markdown_table({"before": before["test"], f"after ({args.method})": after["test"]})
    )
    print(f"calibrator: {path}  evaluation: {evaluation}")
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
    """List registered datasets, or check which ones the data root holds and can read.

    ``check`` prints one line per dataset: ``ok``, ``missing`` (a folder or file is not there)
    or ``unreadable`` (a file is there but cannot be read or decoded: truncated, corrupt, of
    another format). It builds the training split, which reads the files unless the decode
    cache holds them already (the cache key changes when a file's size or time changes);
    ``--deep`` bypasses the cache and decodes every file of the dataset. Exit status: 0 when
    every checked dataset is ok, 1 when some are missing, 2 when some are unreadable.
    """
    names = args.names or DATASETS.names()
    unknown = [n for n in names if n not in DATASETS.names()]
    if unknown:
        raise KeyError(f"unknown dataset(s) {unknown}; known: {', '.join(DATASETS.names())}")
    if args.action == "list":
        for name in names:
            meta = DATASETS.meta(name)
            print(f"{name:20s} {meta.get('task', '')}")
        return 0
    root = data_root(args.data_root)
    missing = unreadable = False
    for name in names:
        try:
            # every loader decodes all files of all splits together (one cache entry)
            ds = DATASETS.build(name, root=root, split="train", use_cache=not args.deep)
            detail = f"{len(ds)} training items" + ("; every file read" if args.deep else "")
            print(f"ok          {name:20s} {detail}")
        except FileNotFoundError as e:
            missing = True
            print(f"missing     {name:20s} {e}")
        except (OSError, ValueError, EOFError) as e:  # present, but cannot be read or decoded
            unreadable = True
            print(f"unreadable  {name:20s} {e}")
    return 2 if unreadable else 1 if missing else 0


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_bench(args) -> int:
    """Run the missing runs of a benchmark suite, then regenerate its results page."""
    from calibrant.bench import plan, render_suite, run_suite
    from calibrant.bench.runner import BenchFailures

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
        from calibrant.bench.runner import environment

        if environment("cpu")["dirty_src"] and not args.allow_dirty:
            print(
                "calibrant: error: src/ has uncommitted changes, so the records could not name "
                "the code they come from; commit first, or pass --allow-dirty (the records are "
                "then marked dirty_src)",
                file=sys.stderr,
            )
            return 2
        device = _select_device(args.device, 0)
        command = "calibrant " + " ".join(sys.argv[1:]) if args.command is None else args.command
        progress = Progress(None, quiet=args.quiet)
        try:
            with _progress_output(progress):
                written = run_suite(
                    suite,
                    results=results,
                    work=work,
                    profile=args.profile,
                    data_root=args.data_root,
                    device=device,
                    command=command,
                    max_minutes=args.max_minutes,
                    callbacks=[progress],
                    on_run=progress.on_bench_run,
                    force=args.force,
                    **selection,
                )
                progress.on_bench_end(len(written))
        except BenchFailures as e:
            failed = e
        finally:
            progress.close()
    page = render_suite(suite, results, args.profile, figures=not args.no_figures)
    left = sum(not r.done for r in plan(suite, results, args.profile, **selection))
    print(f"results: {page} ({left} runs of this selection still to do)")
    if failed is not None:
        print(f"calibrant: error: {failed}", file=sys.stderr)
        return 1
    return 0


def cmd_list(args) -> int:
    """Print registered names of one family (all families when none is given)."""
    if args.family == "keys":  # the keys of the plain config sections, typed
        from calibrant.config_schema import describe_keys

        print("\n".join(describe_keys()))
        return 0
    families = {  # family -> its names
        "losses": calibrant.LOSSES.names,
        "alm": partial(calibrant.LOSSES.names, alm=True),  # the ALM objectives among the losses
        "models": calibrant.MODELS.names,
        "datasets": calibrant.DATASETS.names,
        "metrics": calibrant.METRICS.names,
        "calibrators": calibrant.CALIBRATORS.names,
        "suites": calibrant.SUITES.names,
        "configs": preset_names,
    }
    wanted = [args.family] if args.family else list(families)
    for family in wanted:
        names = families[family]()
        if len(wanted) > 1:
            print(f"{family}:")
        print(("  " if len(wanted) > 1 else "") + " ".join(names))
    return 0


# ------------------------------------------------------------------------------------- parser


def _registered_summary() -> str:
    return (
        f"losses: {' '.join(calibrant.LOSSES.names())}\n"
        f"(ALM objectives among them: {' '.join(calibrant.LOSSES.names(alm=True))})\n"
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
    parser.add_argument("--version", action="version", version=f"calibrant {_extras.version()}")
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
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="overrides, before or after the options, e.g. loss=mbls loss.margin=5 "
        "optim.lr=1e-3 train.epochs=2; every key is checked (exit 2 on an unknown key)",
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and overrides, print the resolved config, write nothing",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run OUT holds (its files are deleted); without it, or --resume, "
        "a folder that holds a run is refused",
    )
    p.add_argument(
        "--logger",
        default="auto",
        choices=("auto", "tensorboard", "csv", "none"),
        help="training logs in OUT/logs/: tensorboard (event files and scalars.csv), csv "
        "(scalars.csv only) or none; auto (default): tensorboard when installed, else csv",
    )
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
    p.add_argument("names", nargs="*", help="datasets to list or check (default: all)")
    p.add_argument("--data-root", default=None)
    p.add_argument(
        "--deep",
        action="store_true",
        help="check: decode every file, bypassing the decode cache",
    )
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("list", help="list registered names")
    p.add_argument(
        "family",
        nargs="?",
        choices=(
            "losses", "alm", "models", "datasets", "metrics", "calibrators", "configs", "suites",
            "keys",
        ),
        help="keys: the keys of the train and eval config sections, with their types",
    )  # fmt: skip
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "bench",
        help="reproduce a paper's comparison (resumable; writes docs/results/<suite>.md)",
    )
    p.add_argument("suite", help="a registered suite (see `calibrant list suites`)")
    p.add_argument(
        "--profile",
        default="cpu",
        help="cpu (short, this machine) | converged (CE/BCE over-confident) | paper (GPU)",
    )
    p.add_argument("--results", default="docs/results", help="JSON records and results pages")
    p.add_argument("--work", default="runs/bench", help="scratch run folders (checkpoints)")
    p.add_argument("--tasks", default=None, help="comma-separated subset of the suite's tasks")
    p.add_argument("--methods", default=None, help="comma-separated subset of its methods")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 1..n)")
    p.add_argument("--max-minutes", type=float, default=None, help="start no run after this")
    p.add_argument("--report-only", action="store_true", help="only regenerate the page")
    p.add_argument("--no-figures", action="store_true", help="page without figures")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state")
    p.add_argument("--force", action="store_true", help="run methods whose task's pilot is a no-go")
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write records although src/ has uncommitted changes (they are marked)",
    )
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)
    common(p)
    p.set_defaults(func=cmd_bench)
    return parser


def _parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``train`` takes its ``key=value`` overrides anywhere, also after options.

    argparse gives a ``nargs="*"`` positional only the words before the first option, so the
    overrides after ``--out DIR`` come back as unrecognised; they are appended in their order.
    """
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "train":
        words = [w for w in extra if not w.startswith("-")]
        extra = [w for w in extra if w.startswith("-")]
        args.overrides = [*args.overrides, *words]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for a usage or input error)."""
    parser = build_parser()
    args = _parse_args(parser, argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        if args.command in _NEEDS_CLI_EXTRA:
            _extras.require_extra("cli", f"`calibrant {args.command}`")
        return args.func(args)
    except ImportError as e:  # an optional dependency: name the extra that brings it
        message = _extras.explain_import_error(e)
        if message is None:
            raise
        print(f"calibrant: error: {message}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError, CheckpointError, DataFileError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"calibrant: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
