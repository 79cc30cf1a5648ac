import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchmetrics
from torch import nn

from calibrant.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from calibrant.engine import EpochSampler, fit, predict_volume, sliding_window
from calibrant.models import to_channels_last
from tests._crash import EXIT_CODE, CrashAfter
from tests._history import untimed

ROOT = Path(__file__).resolve().parents[1]


def _problem(seed: int = 0, channels_last: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 2, 8, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    train = torch.utils.data.TensorDataset(x[:32], y[:32])
    val = torch.utils.data.TensorDataset(x[32:], y[32:])
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3), nn.Conv2d(8, 3, 1)
    )
    if channels_last:
        to_channels_last(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=5,
        sampler=EpochSampler(len(train), seed=seed),
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader = torch.utils.data.DataLoader(val, batch_size=4)
    metrics = {"acc": torchmetrics.classification.MulticlassAccuracy(3, average="micro")}
    return model, loader, val_loader, opt, sched, metrics


def _criterion(kind: str) -> nn.Module:
    if kind == "bwcr":  # the two-view objective: its view generator must resume exactly too
        from calibrant.registry import LOSSES
        from calibrant.views import two_view_objective

        return two_view_objective(LOSSES.get("bwcr").factory, seed=3)
    return nn.CrossEntropyLoss()


def _run(
    ckpt_dir: str,
    resume: bool,
    crash_after: int | None,
    epochs: int = 4,
    kind: str = "ce",
    channels_last: bool = False,
):
    model, loader, val_loader, opt, sched, metrics = _problem(channels_last=channels_last)
    history = fit(
        model,
        loader,
        val_loader,
        _criterion(kind),
        opt,
        epochs=epochs,
        metrics=metrics,
        select="acc",
        scheduler=sched,
        checkpoint_dir=ckpt_dir,
        checkpoint_every=3,
        resume=resume,
        callbacks=[CrashAfter(crash_after)] if crash_after is not None else (),
    )
    return model.state_dict(), history


def _subprocess(ckpt_dir, resume, crash_after, kind="ce", channels_last=False):
    code = (
        "from tests.test_engine import _run; "
        f"_run({str(ckpt_dir)!r}, {resume}, {crash_after}, kind={kind!r}, "
        f"channels_last={channels_last})"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True)


@pytest.mark.parametrize(("kind", "channels_last"), [("ce", False), ("bwcr", False), ("ce", True)])
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path, kind, channels_last):
    opts = dict(kind=kind, channels_last=channels_last)
    ref_state, ref_history = _run(str(tmp_path / "ref"), resume=False, crash_after=None, **opts)
    # 7 steps per epoch; die at global step 11 (mid epoch 2), last periodic save at step 9.
    killed = _subprocess(tmp_path / "run", resume=False, crash_after=11, **opts)
    assert killed.returncode == EXIT_CODE, killed.stderr.decode()[-2000:]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["global_step"] == 9
    state, history = _run(str(tmp_path / "run"), resume=True, crash_after=None, **opts)
    for name, ref in ref_state.items():
        assert torch.equal(state[name], ref), name
        if channels_last and ref.dim() == 4:  # the resumed weights keep the layout
            assert state[name].is_contiguous(memory_format=torch.channels_last), name
    assert untimed(history) == untimed(ref_history)
    if kind == "bwcr":
        assert set(history[0]["train"]) == {"loss", "sup0", "sup1", "cons", "steps"}


def test_bwcr_checkpoint_holds_the_advanced_view_generator(tmp_path):
    from calibrant.views import TwoViewObjective

    killed = _subprocess(tmp_path / "run", resume=False, crash_after=4, kind="bwcr")
    assert killed.returncode == EXIT_CODE, killed.stderr.decode()[-2000:]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    fresh = TwoViewObjective(nn.Identity(), seed=3).get_extra_state()["generator"]
    assert not torch.equal(ckpt["criterion"]["_extra_state"]["generator"], fresh)


def test_step_log_reports_step_total_and_running_loss(tmp_path):
    calls = []
    model, loader, val_loader, opt, sched, metrics = _problem()
    history = fit(
        model,
        loader,
        val_loader,
        nn.CrossEntropyLoss(),
        opt,
        epochs=2,
        metrics=metrics,
        select="acc",
        step_log=lambda step, total, loss: calls.append((step, total, float(loss))),
    )
    assert [(s, t) for s, t, _ in calls] == [(s, 7) for s in range(1, 8)] * 2
    assert calls[6][2] == pytest.approx(history[0]["train"]["loss"])
    assert calls[13][2] == pytest.approx(history[1]["train"]["loss"])


class _Scripted:
    """A validation 'metric' that returns a scripted score per epoch."""

    def __init__(self, scores):
        self.scores, self.epoch = list(scores), 0

    def reset(self):
        pass

    def update(self, *args):
        pass

    def compute(self):
        self.epoch += 1
        return torch.tensor(self.scores[self.epoch - 1])


@pytest.mark.parametrize(
    ("scores", "patience", "epochs_run", "best_epoch"),
    [
        ([0.1, 0.5, 0.4, 0.5, 0.3, 0.9], 3, 5, 2),  # 3 epochs without improving on 0.5
        ([0.1, 0.5, 0.4, 0.6, 0.3, 0.2], 2, 6, 4),  # improvement at epoch 4 resets the count
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 1, 6, 6),  # always improving: never stops
        ([0.5, 0.4, 0.3, 0.2, 0.1, 0.0], None, 6, 1),  # no patience: trains every epoch
    ],
)
def test_early_stopping(tmp_path, scores, patience, epochs_run, best_epoch):
    model, loader, val_loader, opt, sched, _ = _problem()
    history = fit(
        model,
        loader,
        val_loader,
        nn.CrossEntropyLoss(),
        opt,
        epochs=6,
        metrics={"score": _Scripted(scores)},
        select="score",
        checkpoint_dir=str(tmp_path),
        patience=patience,
    )
    assert len(history) == epochs_run
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == best_epoch


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        _run(str(tmp_path), resume=True, crash_after=None)


def test_corrupt_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_sampler_sharding_covers_everything_once():
    parts = [
        list(EpochSampler(10, world_size=3, rank=r, shuffle=False, pad=False)) for r in range(3)
    ]
    assert sorted(i for p in parts for i in p) == list(range(10))
    s = EpochSampler(10, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:]


def test_predict_volume_slicewise_equals_per_slice():
    model = nn.Conv2d(1, 3, 3, padding=1)
    vol = torch.randn(1, 1, 5, 8, 8)
    out = predict_volume(model, vol, model_dims=2, batch_size=2)
    assert out.shape == (1, 3, 5, 8, 8)
    torch.testing.assert_close(out[0, :, 3], model(vol[:, :, 3])[0])


def test_sliding_window_equals_whole_for_translation_equivariant_model():
    model = nn.Conv3d(1, 2, 1)
    vol = torch.randn(1, 1, 9, 10, 7)
    whole = model(vol)
    torch.testing.assert_close(sliding_window(model, vol, (4, 4, 4)), whole, rtol=1e-5, atol=1e-5)


def _ddp_problem(rank: int, world_size: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 2, 6, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    train = torch.utils.data.TensorDataset(x[:32], y[:32])
    val = torch.utils.data.TensorDataset(x[32:], y[32:])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(
        train,
        batch_size=8 // world_size,
        sampler=EpochSampler(len(train), seed=0, rank=rank, world_size=world_size),
        generator=torch.Generator().manual_seed(0),
    )
    val_sampler = EpochSampler(len(val), shuffle=False, rank=rank, world_size=world_size, pad=False)
    val_loader = torch.utils.data.DataLoader(val, batch_size=3, sampler=val_sampler)
    metrics = {
        "acc": torchmetrics.classification.MulticlassAccuracy(3, average="micro"),
        "nll": torchmetrics.MeanMetric(),
    }
    return model, loader, val_loader, opt, metrics


class _NLL(torchmetrics.Metric):
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits, target):
        nll = nn.functional.cross_entropy(logits, target, reduction="sum")
        self.total += nll.double()
        self.count += target.numel()

    def compute(self):
        return self.total / self.count


def _ddp_worker(rank, world_size):
    from calibrant.registry import LOSSES

    model, loader, val_loader, opt, metrics = _ddp_problem(rank, world_size)
    metrics["nll"] = _NLL()
    criterion = LOSSES.build("crac", num_classes=3, rho_step=1)
    history = fit(
        model, loader, val_loader, criterion, opt, epochs=3, metrics=metrics, select="acc"
    )
    bare = model.module if hasattr(model, "module") else model
    state = {k: v.detach().clone() for k, v in bare.state_dict().items()}
    alm = criterion.parts["alm"]
    return state, history, (alm.lam.clone(), alm.rho.clone())


@pytest.mark.ddp
def test_two_process_gloo_run_matches_single_process_with_alm_multipliers():
    from tests._ddp import run_ddp

    single_state, single_history, (single_lam, single_rho) = _ddp_worker(0, 1)
    results = run_ddp(_ddp_worker, world_size=2)
    assert single_lam.max() > 1e-3  # the multipliers did move
    for state, history, (lam, rho) in results:
        torch.testing.assert_close(lam, single_lam, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(rho, single_rho, rtol=1e-6, atol=0)
        for name, ref in single_state.items():
            torch.testing.assert_close(state[name], ref, rtol=1e-5, atol=1e-6)
        for rec, ref in zip(history, single_history, strict=True):
            assert rec["val"]["acc"] == pytest.approx(ref["val"]["acc"])
            assert rec["val"]["nll"] == pytest.approx(ref["val"]["nll"], rel=1e-5)


def test_optimizer_and_scheduler_config_errors_name_the_problem():
    from calibrant.experiment import build_optimizer, build_scheduler

    params = nn.Linear(2, 2).parameters()
    opt = build_optimizer({"name": "sgd", "lr": 0.1}, params)
    assert build_scheduler({"name": "cosine"}, opt, epochs=7).T_max == 7
    assert build_scheduler({"name": "step", "step_size": 3}, opt, epochs=7).step_size == 3
    with pytest.raises(ValueError, match="stepsize"):
        build_scheduler({"name": "step", "stepsize": 3}, opt, epochs=7)
    with pytest.raises(ValueError, match="unknown scheduler"):
        build_scheduler({"name": "poly"}, opt, epochs=7)
    with pytest.raises(ValueError, match="optimizer 'sgd'"):
        build_optimizer({"name": "sgd", "learning_rate": 0.1}, nn.Linear(2, 2).parameters())
