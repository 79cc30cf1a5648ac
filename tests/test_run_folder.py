"""Run folders through the CLI: protected runs, verified checkpoints, no leftovers, data errors.

Issue 16 items 5-10 and issue 19 item 2. Trainings are tiny (MULAN scene MLP, 1 epoch, about
2 s; long-tailed Fashion-MNIST for the calibrator), on the real data root.
"""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from calibrant import experiment, report
from calibrant.cli import main
from tests.conftest import require_dataset

MULAN = ["mulan_bce", "train.epochs=1", "model.hidden=[8]"]
FMNIST = ["fmnist_lt_ce", "train.epochs=2", "model.hidden=[8]", "data.max_per_class=100"]
CPU = ["--device", "cpu", "--quiet"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> content)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _flip(path: Path, n: int = 2000) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def root(data_root) -> str:
    require_dataset(data_root, "mulan", "scene")
    return str(data_root)


@pytest.fixture(scope="module")
def mulan_run(root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mulan"
    assert main(["train", *MULAN, "--out", str(out), "--data-root", root, *CPU]) == 0
    return out


@pytest.fixture
def run(mulan_run, tmp_path) -> Path:
    """A private copy of the trained MULAN run."""
    return Path(shutil.copytree(mulan_run, tmp_path / "run"))


def _train(out, root, *extra) -> int:
    return main(["train", *MULAN, *extra, "--out", str(out), "--data-root", root, *CPU])


# ---------------------------------------------------------------- item 5: a run is protected


def test_training_into_a_folder_holding_a_run_is_refused(run, root, capsys):
    before = _snapshot(run)
    other = ["train", "mulan_bce", "train.epochs=1", "model.hidden=[4]", "--out", str(run)]
    assert main([*other, "--data-root", root, *CPU]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(run) == before


def test_overwrite_replaces_the_run_and_clears_its_files(run, root):
    stale = [
        "figures/multipliers.png",
        "evaluations/last.json",
        "calibrator_temperature.pt",
        "checkpoints/old.pt",
        "metrics_calibrated.json",
    ]
    for name in stale:
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("old run")
    (run / "notes.txt").write_text("mine")  # not a run file: kept
    assert _train(run, root, "model.hidden=[4]", "--overwrite") == 0
    for name in stale:
        assert not (run / name).exists(), name
    assert json.loads((run / "config.json").read_text())["model"]["hidden"] == [4]
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "checkpoints" / "last.pt").is_file()


def test_resume_and_overwrite_together_are_refused(run, root, capsys):
    before = _snapshot(run)
    assert _train(run, root, "--resume", "--overwrite") == 2
    assert "pick one" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_a_folder_without_a_run_is_used_as_it_is(root, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert _train(tmp_path, root) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "metrics.json").is_file()


# ------------------------------------------------------- item 6: --resume with another config


def test_resume_with_another_config_is_refused_and_changes_nothing(run, root, capsys):
    before = _snapshot(run)
    assert _train(run, root, "train.epochs=2", "--resume") == 2
    err = capsys.readouterr().err
    assert "another config" in err and "train.epochs: 1 -> 2" in err
    assert "Traceback" not in err
    assert _snapshot(run) == before


def test_resume_of_nothing_is_an_error_and_creates_nothing(root, tmp_path, capsys):
    out = tmp_path / "none"
    assert _train(out, root, "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not out.exists()


def test_resume_with_the_same_config_continues(run, root):
    assert _train(run, root, "--resume") == 0


# -------------------------------------------------- item 7: checkpoints carry a verified checksum


def test_damaged_checkpoint_stops_resume_and_eval_and_is_kept(run, root, capsys):
    _flip(run / "checkpoints" / "last.pt")
    before = _snapshot(run)
    assert _train(run, root, "--resume") == 2
    err = capsys.readouterr().err
    assert "fails its checksum" in err and "last.pt" in err
    args = ["eval", str(run), "--checkpoint", "last", "--data-root", root, "--device", "cpu"]
    assert main(args) == 2
    assert "fails its checksum" in capsys.readouterr().err
    assert _snapshot(run) == before  # the damaged file is kept, nothing else changed


def test_every_checkpoint_of_a_run_records_its_checksum(mulan_run):
    for name in ("last.pt", "best.pt"):
        wrapper = torch.load(mulan_run / "checkpoints" / name, weights_only=True)
        assert wrapper["format_version"] == 2 and len(wrapper["sha256"]) == 64, name


# ----------------------------------------------------------- item 9: a failed start leaves nothing


def test_failed_start_on_missing_data_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "run"
    args = ["train", *MULAN, "--out", str(out), "--data-root", str(tmp_path / "nope"), *CPU]
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_failure_before_the_first_checkpoint_removes_what_the_start_created(
    root, tmp_path, monkeypatch
):
    def crash(*args, **kwargs):
        raise RuntimeError("crash in the first step")

    monkeypatch.setattr(experiment, "fit", crash)
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError, match="first step"):
        _train(out, root)
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"  # a folder that existed before: kept, with its files
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="first step"):
        _train(mine, root)
    assert _snapshot(mine) == {"notes.txt": b"mine"}
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_failure_after_a_checkpoint_keeps_the_run_for_resume(root, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(report, "evaluate_run", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="evaluation failed"):
        _train(out, root)
    assert (out / "config.json").is_file()
    assert (out / "checkpoints" / "last.pt").is_file()
    monkeypatch.undo()
    assert _train(out, root, "--resume") == 0
    assert (out / "metrics.json").is_file()


# --------------------------------------------------------- item 10: modes follow the user's umask


def test_checkpoints_get_the_mode_the_umask_gives(root, tmp_path):
    old = os.umask(0o002)
    try:
        assert _train(tmp_path / "run", root) == 0
    finally:
        os.umask(old)
    for name in ("last.pt", "best.pt"):
        mode = stat.S_IMODE((tmp_path / "run" / "checkpoints" / name).stat().st_mode)
        assert mode == 0o664, (name, oct(mode))


# ------------------------------------------------------------- item 8: corrupt data files


def _link_tree(files: list[Path], source: Path, target: Path) -> None:
    for f in files:
        dest = target / f.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(f)


def _truncate_copy(src: Path, dest: Path, keep: int) -> None:
    dest.unlink(missing_ok=True)
    dest.write_bytes(src.read_bytes()[:keep])


@pytest.fixture
def damaged_root(data_root, tmp_path, monkeypatch) -> Path:
    """A data root of symlinks to a few real ACDC and Hippocampus files, one of each truncated."""
    acdc = require_dataset(data_root, "acdc", "ACDC_training_volumes")
    hippo = require_dataset(data_root, "msd_hippocampus", "imagesTr").parent
    monkeypatch.setenv("CALIBRANT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    volumes = sorted(acdc.glob("patient00[3-6]_*.h5"))  # training patients of the split
    _link_tree([*volumes, acdc.parent / "split_ssl4mis_patients.txt"], data_root, root)
    cases = sorted((hippo / "imagesTr").glob("hippocampus_0*.nii.gz"))[:10]
    labels = [hippo / "labelsTr" / c.name for c in cases]
    _link_tree([*cases, *labels], data_root, root)
    h5 = root / volumes[0].relative_to(data_root)
    _truncate_copy(volumes[0], h5, 30000)
    nii = root / cases[0].relative_to(data_root)
    _truncate_copy(cases[0], nii, 3000)
    return root


@pytest.mark.parametrize(
    ("preset", "damaged"),
    [("acdc_ce", "patient003_frame01.h5"), ("hippocampus_ce", "hippocampus_001.nii.gz")],
)
def test_truncated_data_file_is_a_clear_error_naming_it(
    damaged_root, tmp_path, capsys, preset, damaged
):
    out = tmp_path / "run"
    args = ["train", preset, "train.epochs=1", "--out", str(out), "--data-root", str(damaged_root)]
    assert main([*args, *CPU]) == 2
    err = capsys.readouterr().err
    assert err.startswith("calibrant: error: cannot read") and damaged in err
    assert "Traceback" not in err
    assert not out.exists()  # item 9: nothing left behind


def test_data_check_tells_missing_from_unreadable(damaged_root, capsys):
    names = ["acdc", "msd_hippocampus", "20newsgroups"]
    assert main(["data", "check", *names, "--data-root", str(damaged_root)]) == 2
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["acdc"].startswith("unreadable") and "patient003_frame01.h5" in lines["acdc"]
    assert lines["msd_hippocampus"].startswith("unreadable")
    assert "hippocampus_001.nii.gz" in lines["msd_hippocampus"]
    assert lines["20newsgroups"].startswith("missing")


def test_data_check_deep_reads_past_the_decode_cache(data_root, tmp_path, monkeypatch, capsys):
    acdc = require_dataset(data_root, "acdc", "ACDC_training_volumes")
    monkeypatch.setenv("CALIBRANT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "data" / "acdc" / "ACDC_training_volumes"
    folder.mkdir(parents=True)
    for f in sorted(acdc.glob("patient00[3-4]_*.h5")):
        shutil.copyfile(f, folder / f.name)
    shutil.copyfile(acdc.parent / "split_ssl4mis_patients.txt", folder.parent / "x.txt")
    (folder.parent / "x.txt").rename(folder.parent / "split_ssl4mis_patients.txt")
    check = ["data", "check", "acdc", "--data-root", str(tmp_path / "data")]
    assert main(check) == 0  # decodes the files and fills the cache
    assert capsys.readouterr().out.startswith("ok")
    # damage one file in place, keeping its size and time: the cache key does not change
    victim = folder / "patient003_frame01.h5"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[:512] = bytes(512)
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert main(check) == 0  # served from the cache
    capsys.readouterr()
    assert main([*check, "--deep"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("unreadable") and "patient003_frame01.h5" in out


# -------------------------------------- issue 19 item 2: eval never replaces the training's results


@pytest.fixture(scope="module")
def fmnist_run(root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "fmnist"
    assert main(["train", *FMNIST, "--out", str(out), "--data-root", root, *CPU]) == 0
    return out


def test_eval_writes_beside_the_training_results_and_the_report_lists_all(fmnist_run, root):
    run = fmnist_run
    metrics = (run / "metrics.json").read_bytes()
    training = json.loads(metrics)
    assert training["checkpoint"] == "best"
    tail = ["--data-root", root, "--device", "cpu"]
    assert main(["eval", str(run), "--checkpoint", "last", *tail]) == 0
    assert (run / "metrics.json").read_bytes() == metrics  # the training's results stay
    last = json.loads((run / "evaluations" / "last.json").read_text())
    assert last["checkpoint"] == "last" and last["calibrator"] is None
    assert last["epoch"] == 2

    assert main(["calibrate", str(run), *tail, "--quiet"]) == 0
    assert (run / "metrics.json").read_bytes() == metrics
    calibrator = run / "calibrator_temperature.pt"
    assert torch.load(calibrator, weights_only=True)["format_version"] == 2  # checksummed
    calibrated = json.loads((run / "evaluations" / "best+calibrator_temperature.json").read_text())
    assert calibrated["checkpoint"] == "best" and calibrated["calibrator"] == str(calibrator)
    # temperature scaling keeps the argmax
    assert calibrated["test"]["accuracy"] == pytest.approx(training["test"]["accuracy"])

    args = ["eval", str(run), "--checkpoint", "last", "--calibrator", str(calibrator), *tail]
    assert main(args) == 0
    assert (run / "evaluations" / "last+calibrator_temperature.json").is_file()
    assert (run / "metrics.json").read_bytes() == metrics

    text = (run / "report.md").read_text()
    assert f"checkpoint `best` (epoch {training['epoch']})" in text  # still true
    for file in (
        "metrics.json",
        "evaluations/last.json",
        "evaluations/best+calibrator_temperature.json",
        "evaluations/last+calibrator_temperature.json",
    ):
        assert f"`{file}`" in text, file
    assert text.count("<!-- evaluations -->") == 1
    assert "| last+calibrator_temperature |" in text


def test_damaged_calibrator_is_an_error(fmnist_run, root, tmp_path, capsys):
    run = Path(shutil.copytree(fmnist_run, tmp_path / "run"))
    calibrator = run / "calibrator_temperature.pt"
    if not calibrator.exists():
        tail = ["--data-root", root, "--device", "cpu", "--quiet"]
        assert main(["calibrate", str(run), *tail]) == 0
    data = bytearray(calibrator.read_bytes())
    data[-200:-100] = bytes(100)
    calibrator.write_bytes(bytes(data))
    args = ["eval", str(run), "--calibrator", str(calibrator), "--data-root", root]
    assert main([*args, "--device", "cpu"]) == 2
    assert "calibrator_temperature.pt" in capsys.readouterr().err
