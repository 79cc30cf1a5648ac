"""The run folder of ``calibrant train``: what it holds, and how a start claims it.

A start of :func:`calibrant.experiment.train_run` goes through three steps:

1. :func:`prepare` (every rank, reads only): a folder that already holds a run is refused
   unless ``resume`` (continue it; the config must equal the stored one) or ``overwrite``
   (replace it) is given; ``resume`` needs ``checkpoints/last.pt``.
2. :func:`begin` (after the experiment was built, so that a bad config or unreadable data never
   touches the folder): rank 0 deletes the old run's files when overwriting, creates the folder
   and writes ``config.json``.
3. :func:`abandon` when the start fails before its first checkpoint: what this start created
   (``config.json``, empty folders it made) is removed again; nothing that existed before is
   touched. Once a checkpoint exists the folder stays, so that ``--resume`` can continue it.

Example:
    >>> import tempfile, pathlib
    >>> from calibrant.run_folder import RunFolderError, holds_run, prepare
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = pathlib.Path(d) / "run"
    ...     _ = prepare(out, {"train": {"epochs": 1}})  # a new folder: fine, nothing written
    ...     out.mkdir(); _ = (out / "config.json").write_text("{}")
    ...     try:
    ...         prepare(out, {"train": {"epochs": 1}})
    ...     except RunFolderError as e:
    ...         print("refused:", holds_run(out))
    refused: True
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibrant import distributed as dist_utils
from calibrant._files import read_json
from calibrant.checkpoint import CheckpointError, load_checkpoint

__all__ = [
    "RUN_DIRS",
    "RUN_FILES",
    "RunFolderError",
    "Start",
    "abandon",
    "begin",
    "config_differences",
    "holds_run",
    "prepare",
    "run_entries",
]

log = logging.getLogger(__name__)

#: files a run folder may hold (``calibrator_<method>.pt`` besides), deleted by ``overwrite``
RUN_FILES = ("config.json", "metrics.json", "report.md", "metrics_calibrated.json")
#: folders a run folder may hold, deleted (with their content) by ``overwrite``
RUN_DIRS = ("checkpoints", "figures", "evaluations", "logs")
_RUN_GLOBS = ("calibrator_*.pt",)


class RunFolderError(ValueError):
    """The output folder cannot take this start (it holds a run, or another config's run)."""


def run_entries(out: str | Path) -> list[Path]:
    """The run files and folders present in ``out`` (what ``overwrite`` deletes)."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [out / n for n in (*RUN_FILES, *RUN_DIRS) if (out / n).exists()]
    for pattern in _RUN_GLOBS:
        found += sorted(out.glob(pattern))
    return found


def holds_run(out: str | Path) -> bool:
    """True when ``out`` holds a run: a config, results, a report or a checkpoint."""
    out = Path(out)
    if any((out / n).is_file() for n in ("config.json", "metrics.json", "report.md")):
        return True
    return (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("*.pt"))


def _normalised(cfg: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(cfg, default=str))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


_ABSENT = object()


def config_differences(stored: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[str]:
    """``key: stored -> new`` for every dotted key whose value differs (JSON-normalised).

    Example:
        >>> config_differences({"train": {"epochs": 2}}, {"train": {"epochs": 3, "seed": 1}})
        ['train.epochs: 2 -> 3', 'train.seed: (absent) -> 1']
    """
    old, new = _flat(_normalised(stored)), _flat(_normalised(cfg))
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b:
            show = [("(absent)" if v is _ABSENT else json.dumps(v)) for v in (a, b)]
            lines.append(f"{key}: {show[0]} -> {show[1]}")
    return lines


@dataclass
class Start:
    """What :func:`prepare` found and :func:`begin` did (for :func:`abandon`)."""

    out: Path
    resume: bool = False
    overwrite: bool = False
    created: list[Path] = field(default_factory=list)  # folders this start made, outermost first
    wrote_config: bool = False
    had_checkpoints_dir: bool = False


def prepare(
    out: str | Path, cfg: Mapping[str, Any], *, resume: bool = False, overwrite: bool = False
) -> Start:
    """Check that ``out`` can take this start; writes nothing.

    Raises:
        RunFolderError: ``resume`` and ``overwrite`` together; ``out`` is a file; ``out``
            holds a run and neither ``resume`` nor ``overwrite`` is given; ``resume`` with a
            config that differs from the stored one (the message lists the differences).
        CheckpointError: ``resume`` without ``out/checkpoints/last.pt``.
    """
    out = Path(out)
    if resume and overwrite:
        raise RunFolderError("--resume continues a run and --overwrite replaces it: pick one")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {str(out)!r} is a file, not a folder")
    if resume:
        last = out / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(
                f"nothing to resume in {str(out)!r}: checkpoint {str(last)!r} does not exist"
            )
        config = out / "config.json"
        if config.is_file():
            stored = read_json(config, RunFolderError, "cannot read")
        else:
            stored = load_checkpoint(last, required=("config",))["config"]
        diffs = config_differences(stored, cfg)
        if diffs:
            shown = "\n  ".join(diffs[:20]) + (
                f"\n  and {len(diffs) - 20} more" if len(diffs) > 20 else ""
            )
            raise RunFolderError(
                f"--resume: the run in {str(out)!r} was trained with another config "
                f"(stored -> given):\n  {shown}\nresume with the same config and overrides, "
                "or train into another --out; nothing was changed"
            )
    elif holds_run(out) and not overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in run_entries(out))
        raise RunFolderError(
            f"{str(out)!r} already holds a run ({names}); pass --resume to continue it, "
            "--overwrite to replace it (its files are deleted), or choose another --out; "
            "nothing was changed"
        )
    return Start(out=out, resume=resume, overwrite=overwrite)


def begin(start: Start, cfg: Mapping[str, Any], *, rank: int = 0) -> None:
    """Claim the folder: on rank 0, clear the old run (overwrite), create it, write the config.

    Every rank calls it: a barrier first makes sure that every rank has run :func:`prepare`
    before rank 0 changes the folder.
    """
    dist_utils.barrier()
    if rank != 0:
        return
    out = start.out
    if start.overwrite:
        for entry in run_entries(out):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    missing = []
    for folder in (out, *out.parents):
        if folder.exists():
            break
        missing.append(folder)
    out.mkdir(parents=True, exist_ok=True)
    start.created = list(reversed(missing))
    start.had_checkpoints_dir = (out / "checkpoints").exists()
    config = out / "config.json"
    if not (start.resume and config.is_file()):
        config.write_text(json.dumps(dict(cfg), indent=2, default=str))
        start.wrote_config = True


def abandon(start: Start, *, rank: int = 0) -> None:
    """After a failed start: remove what it created, unless a checkpoint was written.

    Nothing that existed before the start is removed (a resumed run is never touched).
    """
    if rank != 0 or start.resume:
        return
    out = start.out
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.glob("*.pt")):
        log.warning("the run in %s stopped; its checkpoints are kept (continue with --resume)", out)
        return
    if start.wrote_config:
        (out / "config.json").unlink(missing_ok=True)
    made = [] if start.had_checkpoints_dir else [checkpoints]
    for folder in (*made, *reversed(start.created)):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass
