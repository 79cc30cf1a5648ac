"""TensorBoard and CSV logs of `calibrant train` (issue 18, "Logging and progress")."""

import csv
import json

import pytest
import torch

from calibrant import runlog
from calibrant.cli import main
from calibrant.data.acdc import ACDC_CLASSES
from calibrant.data.fashion_mnist import FASHION_MNIST_CLASSES
from calibrant.runlog import RunLogger, alm_slots, epoch_scalars

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is in the test extra",
)

TINY = ["train.epochs=2", "model.hidden=[16]", "data.max_per_class=300"]


def _events(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _csv(path):
    with open(path, newline="") as f:
        return [(int(r["epoch"]), r["tag"], float(r["value"])) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tb_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cals"
    args = ["train", "fmnist_lt_cals_alm", *TINY, "--out", str(out), "--data-root", str(data_root)]
    assert main([*args, "--device", "cpu", "--quiet", "--logger", "tensorboard"]) == 0
    return out


def test_tensorboard_events_hold_every_scalar_and_the_reliability_image(tb_run):
    acc = _events(tb_run / "logs")
    tags = set(acc.Tags()["scalars"])
    metrics = json.loads((tb_run / "metrics.json").read_text())
    history = metrics["history"]
    # the loss and each of its parts, the validation metrics, the learning rate
    for tag in ("train/loss", "train/ce", "train/alm", "val/accuracy", "lr"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    assert [e.value for e in acc.Scalars("train/alm")] == pytest.approx(
        [r["train"]["alm"] for r in history], rel=1e-6
    )
    assert [e.value for e in acc.Scalars("lr")] == pytest.approx([r["lr"][0] for r in history])
    # λ, ρ and the violation of every slot, named by class
    for k, name in enumerate(FASHION_MNIST_CLASSES):
        tag = runlog._TAG.sub("_", name)
        for part in ("lambda", "rho", "violation"):
            assert f"{part}/{tag}" in tags, (part, tag)
        lam = [e.value for e in acc.Scalars(f"lambda/{tag}")]
        assert lam == pytest.approx([r["alm"]["alm0"]["lambda"][k] for r in history], rel=1e-6)
    # the test metrics of the best checkpoint
    assert acc.Scalars("test/ece")[0].value == pytest.approx(metrics["test"]["ece"], rel=1e-6)
    # the reliability diagram at each validation pass
    images = acc.Images("val/reliability")
    assert [i.step for i in images] == [1, 2]
    assert images[0].width > 100 and images[0].encoded_image_string.startswith(b"\x89PNG")


def test_csv_holds_the_same_scalars(tb_run):
    rows = _csv(tb_run / "logs" / "scalars.csv")
    acc = _events(tb_run / "logs")
    tb = {(e.step, tag): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    assert {(e, t) for e, t, _ in rows} == set(tb)
    for epoch, tag, value in rows:
        assert value == pytest.approx(tb[epoch, tag], rel=1e-6, abs=1e-12), (epoch, tag)


def test_run_folder_records_class_and_slot_names(tb_run):
    metrics = json.loads((tb_run / "metrics.json").read_text())
    assert metrics["info"]["class_names"] == list(FASHION_MNIST_CLASSES)
    slots = metrics["alm_slots"]["alm0"]
    assert slots["method"] == "CALS-ALM" and slots["layout"] == "class"
    assert slots["slots"] == list(FASHION_MNIST_CLASSES)


def _record(epoch, lam=(0.1, 0.2)):
    return {
        "epoch": epoch,
        "train": {"loss": 1.0 / epoch, "ce": 0.9 / epoch, "steps": 3},
        "val": {"dice": 0.5, "scores": {"jaccard": 0.25}},
        "alm": {"alm0": {"lambda": [list(lam)], "rho": [[1.0, 1.0]]}},
        "lr": [0.01, 0.001],
    }


def test_csv_logger_writes_no_events_and_none_writes_nothing(tmp_path):
    logger = RunLogger(tmp_path / "csv", "csv")
    logger.on_epoch_end(_record(1))
    logger.close()
    files = sorted(p.name for p in (tmp_path / "csv" / "logs").iterdir())
    assert files == ["scalars.csv"]
    tags = {t for _, t, _ in _csv(tmp_path / "csv" / "logs" / "scalars.csv")}
    assert {"train/loss", "train/ce", "val/dice", "val/scores/jaccard", "lr/group0"} <= tags
    assert "train/steps" not in tags
    none = RunLogger(tmp_path / "none", "none")
    none.on_epoch_end(_record(1))
    none.close()
    assert not (tmp_path / "none").exists()
    other_rank = RunLogger(tmp_path / "rank1", "csv", rank=1)
    other_rank.on_epoch_end(_record(1))
    assert not (tmp_path / "rank1").exists()


def test_a_resumed_run_replaces_the_epochs_it_trains_again(tmp_path):
    first = RunLogger(tmp_path, "tensorboard")
    for epoch in (1, 2, 3):
        first.on_epoch_end(_record(epoch, lam=(epoch, 0.0)))
    first.close()  # "killed" during epoch 4, resumed from the checkpoint of epoch 2
    second = RunLogger(tmp_path, "tensorboard", resume=True)
    for epoch in (3, 4):
        second.on_epoch_end(_record(epoch, lam=(10 * epoch, 0.0)))
    second.close()
    rows = [(e, v) for e, t, v in _csv(tmp_path / "logs" / "scalars.csv") if t == "lambda/slot_0"]
    assert rows == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    acc = _events(tmp_path / "logs")
    assert [(e.step, e.value) for e in acc.Scalars("lambda/slot_0")] == rows


def test_slot_names_of_crac_name_region_and_class():
    from calibrant.alm.presets import crac

    slots = alm_slots(crac(4), ACDC_CLASSES, "crac")["alm0"]
    assert slots["method"] == "CRaC" and slots["layout"] == "region_class"
    assert slots["slots"][:2] == ["inner/background", "inner/right_ventricle"]
    assert slots["slots"][-1] == "boundary/left_ventricle"
    lam = torch.arange(8.0).reshape(2, 4).tolist()
    record = {"epoch": 1, "alm": {"alm0": {"lambda": lam, "rho": lam}}}
    scalars = epoch_scalars(record, {"alm0": slots})
    assert scalars["lambda/inner/right_ventricle"] == 1.0
    assert scalars["rho/boundary/left_ventricle"] == 7.0


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runlog, "tensorboard_available", lambda: False)
    out = tmp_path / "run"
    args = ["train", "fmnist_lt_ce", "--out", str(out), "--logger", "tensorboard"]
    assert main(args) == 2
    assert "calibrant[cli]" in capsys.readouterr().err
    assert not out.exists()
    assert runlog.resolve_logger("auto") == "csv"  # the default falls back to the CSV
