"""End-to-end CLI runs on the real ACDC data at a tiny CPU budget."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from calibrant.checkpoint import load_checkpoint
from calibrant.cli import Progress, main
from tests._crash import EXIT_CODE
from tests._history import untimed
from tests.conftest import require_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.downsample=4",
    "model.base_channels=4",
    "model.depth=2",
    "train.epochs=2",
    "train.batch_size=64",
    "train.checkpoint_every=5",
    "eval.batch_size=64",
]


@pytest.fixture(scope="module")
def acdc_root(data_root):
    require_dataset(data_root, "acdc", "ACDC_training_volumes")
    return str(data_root)


@pytest.fixture(scope="module")
def trained(acdc_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "crac"
    args = ["train", "acdc_crac", *TINY, "--out", str(out), "--data-root", acdc_root, "--quiet"]
    assert main([*args, "--device", "cpu"]) == 0
    return out


def test_train_writes_report_checkpoints_and_figures(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["dice"] <= 1.0
    assert 0.0 <= metrics["test"]["ece_paper"] <= 1.0
    assert len(metrics["history"]) == 2
    alm = metrics["history"][-1]["alm"]["alm0"]
    assert len(alm["lambda"]) == 2 and len(alm["lambda"][0]) == 4  # [region, class]
    assert (trained / "checkpoints" / "last.pt").is_file()
    assert (trained / "checkpoints" / "best.pt").is_file()
    assert (trained / "figures" / "training.png").is_file()
    assert (trained / "figures" / "multipliers.png").is_file()
    for name in ("reliability", "reliability_classwise", "reliability_regions"):
        assert (trained / "figures" / f"{name}.png").is_file(), name
    curves = metrics["curves"]
    assert {f"reliability/class_{k}" for k in range(4)} <= set(curves)
    # every non-ignored pixel lands in one bin of every class's curve
    pixels = sum(curves["reliability/all"]["count"])
    assert all(sum(curves[f"reliability/class_{k}"]["count"]) == pixels for k in range(4))
    assert "| run |" in (trained / "report.md").read_text()


def test_killed_run_resumes_to_the_same_result(trained, acdc_root, tmp_path):
    out = tmp_path / "crac"
    # the command line in a subprocess that a test callback kills after 7 steps (saved at 5)
    cmd = [sys.executable, "-m", "tests._crash", "7", "train", "acdc_crac", *TINY, "--out"]
    cmd += [str(out), "--data-root", acdc_root, "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    killed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True)
    assert killed.returncode == EXIT_CODE, killed.stderr.decode()[-2000:]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["global_step"] < 7
    assert (
        main(
            [
                "train",
                "acdc_crac",
                *TINY,
                "--out",
                str(out),
                "--data-root",
                acdc_root,
                "--device",
                "cpu",
                "--quiet",
                "--resume",
            ]
        )
        == 0
    )
    ref = json.loads((trained / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert got["test"] == ref["test"]
    assert untimed(got["history"]) == untimed(ref["history"])  # the same epochs


def test_eval_and_calibrate(trained, acdc_root, capsys):
    assert main(["eval", str(trained), "--data-root", acdc_root, "--device", "cpu"]) == 0
    assert main(["calibrate", str(trained), "--data-root", acdc_root, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "after (temperature)" in out
    calibrated = trained / "evaluations" / "best+calibrator_temperature.json"
    calibrated = json.loads(calibrated.read_text())
    before = json.loads((trained / "metrics.json").read_text())
    # temperature scaling keeps the argmax: overlap scores are unchanged
    assert calibrated["test"]["dice"] == pytest.approx(before["test"]["dice"])
    assert main(["compare", str(trained), str(trained)]) == 0


def test_unknown_loss_suggests_close_match(acdc_root, tmp_path, capsys):
    code = main(["train", "acdc_ce", "loss=crak", "--out", str(tmp_path), "--data-root", acdc_root])
    assert code == 2
    assert "did you mean 'crac'" in capsys.readouterr().err


def test_missing_data_root_is_an_error(tmp_path, capsys):
    code = main(
        ["train", "acdc_ce", "--out", str(tmp_path / "r"), "--data-root", str(tmp_path / "nope")]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_override_and_unknown_preset(tmp_path, capsys):
    assert main(["train", "acdc_ce", "loss", "--out", str(tmp_path)]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["train", "no_such_preset", "--out", str(tmp_path)]) == 2
    assert "presets:" in capsys.readouterr().err


def test_bad_channels_last_value_is_an_error(tmp_path, capsys):
    args = ["train", "hippocampus_ce", "train.channels_last=3", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "train.channels_last must be true or false, got 3" in capsys.readouterr().err


def test_corrupt_checkpoint_on_resume_is_an_error(acdc_root, tmp_path, capsys):
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    code = main(
        [
            "train",
            "acdc_ce",
            *TINY,
            "--out",
            str(tmp_path),
            "--data-root",
            acdc_root,
            "--device",
            "cpu",
            "--resume",
        ]
    )
    assert code == 2
    assert "corrupt" in capsys.readouterr().err


def test_list_and_help(capsys):
    assert main(["list", "losses"]) == 0
    losses = capsys.readouterr().out.split()
    assert "crac" in losses and "ce" in losses  # one registry: the ALM objectives are losses
    assert main(["list", "alm"]) == 0
    alm = capsys.readouterr().out.split()
    assert "crac" in alm and "ce" not in alm
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "ALM objectives among them:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("preset", "overrides", "keys"),
    [
        ("mulan_spa_lpr", ["train.epochs=1"], ("map_y", "map_x", "ace", "mce")),
        ("fmnist_lt_cals_alm", ["train.epochs=1", "model.hidden=[32]"], ("accuracy", "ece")),
        (
            "hippocampus_crac",
            ["train.epochs=1", "model.base_channels=4", "model.depth=2"],
            ("dice", "hd95", "ece_paper"),
        ),
    ],
)
def test_other_presets_train_and_report(data_root, tmp_path, preset, overrides, keys):
    out = tmp_path / preset
    args = ["train", preset, *overrides, "--out", str(out), "--data-root", str(data_root)]
    assert main([*args, "--device", "cpu", "--quiet"]) == 0
    test = json.loads((out / "metrics.json").read_text())["test"]
    for key in keys:
        assert 0.0 <= test[key] < float("inf"), (key, test[key])


def test_bwcr_preset_trains_with_two_views(acdc_root, tmp_path):
    out = tmp_path / "bwcr"
    tiny = [t for t in TINY if not t.startswith("train.epochs")] + ["train.epochs=1"]
    args = ["train", "acdc_bwcr", *tiny, "--out", str(out), "--data-root", acdc_root]
    assert main([*args, "--device", "cpu", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["history"][0]["train"]
    assert {"sup0", "sup1", "cons"} <= set(train)
    assert train["loss"] == pytest.approx(train["sup0"] + train["sup1"] + train["cons"])
    assert train["cons"] > 0
    assert 0.0 <= metrics["test"]["dice"] <= 1.0
    ckpt = (out / "checkpoints" / "last.pt").is_file()
    assert ckpt


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Loss:  # a lazy loss: counts how often the progress line reads it
    def __init__(self, value: float) -> None:
        self.value, self.reads = value, 0

    def __float__(self) -> float:
        self.reads += 1
        return self.value


def _epoch(progress, clock, total, dt, loss):
    for step in range(1, total + 1):
        clock.t += dt
        progress.step_done(step, total, loss)


def test_within_epoch_progress_is_throttled():
    # line mode (not a terminal); the terminal's tqdm bars: tests/test_logging_progress.py
    stream, clock, loss = _Stream(False), _Clock(), _Loss(0.25)
    progress = Progress(2, stream=stream, interval=5.0, clock=clock)
    _epoch(progress, clock, total=100, dt=0.5, loss=loss)  # 50 s: a line every 5 s (10 steps)
    text = stream.getvalue()
    lines = text.splitlines()
    assert len(lines) == 9  # steps 10, 20, ..., 90 (the last step leaves it to the epoch line)
    assert loss.reads == 9  # the loss is read only when a line is printed
    assert lines[0].strip() == "step 10/100  loss=0.2500  2.00 step/s  eta 45s"
    assert "\r" not in text
    progress.epoch_done({"epoch": 1, "train": {"loss": 0.25}, "val": {"dice": 0.5}})
    last = stream.getvalue().splitlines()[-1]
    assert last.endswith("s") and "epoch 1/2  loss=0.2500  dice=0.5000" in last


def test_progress_quiet_and_fast_epochs_print_nothing_within_the_epoch():
    stream, clock = _Stream(False), _Clock()
    quiet = Progress(1, quiet=True, stream=stream, interval=0.0, clock=clock)
    _epoch(quiet, clock, total=10, dt=1.0, loss=_Loss(1.0))
    quiet.epoch_done({"epoch": 1, "train": {"loss": 1.0}, "val": {}})
    assert stream.getvalue() == ""
    fast = Progress(1, stream=stream, interval=5.0, clock=clock)
    _epoch(fast, clock, total=10, dt=0.1, loss=_Loss(1.0))  # 1 s in all: under the interval
    assert stream.getvalue() == ""


def test_progress_of_unknown_length_has_no_total_or_eta():
    stream, clock = _Stream(False), _Clock()
    progress = Progress(None, stream=stream, clock=clock)
    clock.t = 3.0
    progress.epoch_done({"epoch": 4, "train": {"loss": 0.5}, "val": {"acc": 0.9}})
    assert stream.getvalue() == "epoch 4  loss=0.5000  acc=0.9000  elapsed 3s\n"


@pytest.mark.ddp
def test_torchrun_two_processes_match_one_process(data_root, tmp_path):
    """``torchrun -m calibrant train`` itself (gloo, 2 ranks) against a 1-process run.

    Same global batch (2 x 32 vs 64) over the same permutation: EpochSampler gives rank r the
    r-th of every 2 indices, so each global batch holds the same samples; the 1090 MULAN-scene
    training items split evenly (545 per rank, last batches 1 + 1 vs 2), BCE is a mean, so the
    all-reduced mean of the two rank means is the 1-process batch mean. Dropout is off (it draws
    from the per-rank global RNG). What differs is only float summation order in the gradient
    all-reduce, ~1e-7 relative per step; after 18 Adam steps the test metrics agree to 1e-4.
    """
    require_dataset(data_root, "mulan", "scene")
    common = ["mulan_bce", "train.epochs=1", "model.dropout=0", "model.hidden=[32]"]
    tail = ["--data-root", str(data_root), "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", *common, "train.batch_size=64", "--out", str(one), *tail]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "calibrant", "train", *common, "train.batch_size=32", "--out", str(two), *tail]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    ref = json.loads((one / "metrics.json").read_text())
    got = json.loads((two / "metrics.json").read_text())
    assert got["history"][0]["train"]["steps"] == ref["history"][0]["train"]["steps"] == 18
    assert set(got["test"]) == set(ref["test"])
    for key, value in ref["test"].items():
        assert got["test"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert got["history"][0]["val"] == pytest.approx(ref["history"][0]["val"], rel=1e-4)
