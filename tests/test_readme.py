"""Every command of the README's "Command line" section runs, so that the README cannot drift.

The commands are read from README.md (the first ``bash`` block under ``## Command line``), not
copied here, and run in order in an empty folder (their ``runs/...`` paths are relative), with
three changes that keep them fast and say nothing about their syntax:

- ``calibrant train`` gets size overrides appended (:data:`TINY`, by dataset: for ACDC, 2
  training patients, 1 validation and 1 test patient, a 2-level UNet with 4 channels, 1 epoch);
  the README's own overrides stay, and ours come last, so they win;
- ``torchrun`` becomes ``python -m torch.distributed.run --standalone`` (the same launcher);
- ``calibrant bench`` gets ``--dry-run`` (it lists the suite's runs instead of training them).

``test_readme_commands_parse`` checks, without data, that every command parses and that every
``train`` config is valid; ``test_readme_commands_run`` runs them all on the real data.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from calibrant.cli import _load_run_config, _parse_args, build_parser, main
from calibrant.config import apply_overrides, load_config
from tests.conftest import REQUIRE_DATA, require_dataset

ROOT = Path(__file__).resolve().parents[1]

# ACDC split of the README run: patients 1-4 of the 100 (each has 2 volumes of 6-18 slices)
ACDC_SPLIT = "train: 003 004\nval: 002\ntest: 001\n"

TINY = {  # data name -> overrides that make a run of that dataset take seconds
    "acdc": [
        "data.split_file={tmp}/acdc_split.txt",
        "data.downsample=4",
        "model.base_channels=4",
        "model.depth=2",
        "train.epochs=1",
        "train.batch_size=16",
        "train.checkpoint_every=0",
        "eval.batch_size=64",
    ],
    "fashion_mnist": ["data.max_per_class=50", "model.hidden=[16]", "train.epochs=1"],
    "cifar10": ["data.max_per_class=20", "model.width=4", "train.epochs=1"],
    "20newsgroups": ["data.max_features=500", "model.hidden=16", "train.epochs=1"],
    "mulan_scene": ["model.hidden=[16]", "train.epochs=1"],
    "msd_hippocampus": ["model.base_channels=4", "model.depth=2", "train.epochs=1"],
}


def readme_commands(path: Path = ROOT / "README.md") -> list[str]:
    """The command lines of the first ``bash`` block under ``## Command line`` (no comments)."""
    text = path.read_text()
    section = re.search(r"^## Command line\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no '## Command line' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "the README's command-line section has no ```bash block"
    lines, pending = [], ""
    for raw in block.group(1).splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        words = shlex.split(line, comments=True)
        if words:
            lines.append(shlex.join(words))
    assert lines, "the README's command-line block is empty"
    return lines


def _calibrant_argv(words: list[str]) -> list[str]:
    """The ``calibrant`` arguments of a README command (``torchrun ... -m calibrant ARGS``)."""
    if words[0] == "calibrant":
        return words[1:]
    if words[0] == "torchrun":
        i = words.index("-m")
        assert words[i + 1] == "calibrant", words
        return words[i + 2 :]
    raise AssertionError(
        f"README command {shlex.join(words)!r}: tests/test_readme.py knows how to run "
        "`calibrant ...` and `torchrun ... -m calibrant ...`; teach it this one"
    )


def _tiny(argv: list[str], tmp: Path) -> list[str]:
    """``argv`` of ``calibrant train`` with the size overrides of its dataset appended."""
    args = _parse_args(build_parser(), argv)
    cfg = apply_overrides(load_config(args.config), args.overrides)
    data = cfg["data"]["name"]
    assert data in TINY, f"README trains on {data!r}: add its size overrides to TINY"
    return [*argv, *(o.format(tmp=tmp) for o in TINY[data])]


def test_readme_commands_parse(tmp_path, capsys):
    """Every README command parses; every ``train`` config is valid (no data needed)."""
    commands = readme_commands()
    assert any(c.startswith("calibrant train") for c in commands)
    for command in commands:
        argv = _calibrant_argv(shlex.split(command))
        args = _parse_args(build_parser(), argv)
        if args.command == "train":
            _load_run_config(args)  # raises ConfigError on a bad key or value
            if not args.dry_run:
                _load_run_config(_parse_args(build_parser(), _tiny(argv, tmp_path)))


def test_readme_parser_reads_continuations_and_comments(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n## Command line\n\nText.\n\n```bash\n"
        "calibrant list          # all families\n"
        "calibrant train a \\\n    --out b x=1   # comment\n\n"
        "```\n\n```bash\nnot this\n```\n\n## Next\n"
    )
    assert readme_commands(readme) == ["calibrant list", "calibrant train a --out b x=1"]


@pytest.mark.slow
def test_readme_commands_run(data_root, tmp_path, monkeypatch):
    """Run every README command in order, in an empty folder, on tiny ACDC data."""
    require_dataset(data_root, "acdc", "ACDC_training_volumes")
    (tmp_path / "acdc_split.txt").write_text(ACDC_SPLIT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALIBRANT_DATA", str(data_root))
    env = {
        **os.environ,
        "CALIBRANT_DATA": str(data_root),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    trained = []
    for command in readme_commands():
        words = shlex.split(command)
        argv = _calibrant_argv(words)
        if argv[0] == "train" and "--dry-run" not in argv:
            argv = _tiny(argv, tmp_path)
            trained.append(tmp_path / argv[argv.index("--out") + 1])
        if argv[0] == "bench" and "--dry-run" not in argv:
            argv = [*argv, "--dry-run"]
        if words[0] == "torchrun":
            launcher = words[1 : words.index("-m")]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *launcher]
            run = subprocess.run(
                [*cmd, "-m", "calibrant", *argv],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert run.returncode == 0, f"{command}\n{run.stderr[-3000:]}"
            continue
        code = main(argv)
        allowed = {0} if REQUIRE_DATA or argv[:2] != ["data", "check"] else {0, 1}
        assert code in allowed, f"README command failed (exit {code}): {command}"
        if argv[0] == "train" and "--dry-run" in argv:
            out = Path(argv[argv.index("--out") + 1])
            assert not out.exists(), f"{command}: a dry run wrote {out}"
    assert trained
    for run in trained:  # every README run is complete
        for name in ("config.json", "metrics.json", "report.md"):
            assert (run / name).is_file(), run / name
