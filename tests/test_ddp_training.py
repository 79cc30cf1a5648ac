"""DDP equals one process: BatchNorm over the global batch, the global mean loss (issue 16)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from calibrant.distributed import SyncBatchNorm, sync_batchnorm
from calibrant.engine import EpochSampler, fit, train_one_epoch
from tests._ddp import run_ddp
from tests._history import untimed

STEPS = 3


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 3, 1),
        nn.BatchNorm2d(3, momentum=None),  # cumulative running average
    )


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, 8, 2, 5, 4, generator=g) * 3 + 1
    y = torch.randint(0, 3, (STEPS, 8, 5, 4), generator=g)
    return x, y


def _train(rank: int, world_size: int, sync: bool):
    model = _net()
    if sync:
        model = sync_batchnorm(model)
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _data()
    for step in range(STEPS):
        xs, ys = x[step, rank::world_size], y[step, rank::world_size]
        loss = nn.functional.cross_entropy(model(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    bare = model.module if world_size > 1 else model
    return {k: v.detach().clone() for k, v in bare.state_dict().items()}


def _worker(rank, world_size):
    return _train(rank, world_size, sync=True), _train(rank, world_size, sync=False)


@pytest.mark.ddp
def test_sync_batchnorm_two_processes_equal_one_process_at_the_global_batch():
    ref = _train(0, 1, sync=False)  # one process, plain BatchNorm, batch 8
    results = run_ddp(_worker, world_size=2)  # 2 x 4
    for synced, _ in results:
        assert set(synced) == set(ref)
        for name, value in ref.items():
            torch.testing.assert_close(synced[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # without synchronisation the same run differs (each rank normalises by its 4 samples)
    plain = results[0][1]
    assert not torch.allclose(plain["1.running_var"], ref["1.running_var"], rtol=1e-3)
    assert not torch.allclose(plain["0.weight"], ref["0.weight"], rtol=1e-3)


def test_sync_batchnorm_keeps_the_state_and_is_plain_batchnorm_in_one_process():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    synced = sync_batchnorm(net)
    assert isinstance(synced[1], SyncBatchNorm) and isinstance(synced[4], SyncBatchNorm)
    assert {k: v.shape for k, v in synced.state_dict().items()} == {
        k: v.shape for k, v in before.items()
    }
    x = torch.randn(4, 2, 5, 4)
    torch.testing.assert_close(synced(x), _net()(x), rtol=0, atol=0)
    assert isinstance(sync_batchnorm(nn.BatchNorm1d(3)), SyncBatchNorm)


TINY_ACDC = [
    "data.downsample=4",
    "data.train_patients=2",  # 26 training slices: global batches of 16 and 10
    "model.base_channels=4",
    "model.depth=2",
    "train.epochs=2",
    "eval.val_metrics=[{name: dice}]",
    "eval.test_metrics=[{name: dice}, {name: nll}]",
]


def _acdc_run(rank, world_size, root, out, overrides):
    from calibrant.config import apply_overrides, load_config
    from calibrant.experiment import train_run

    cfg = apply_overrides(load_config("acdc_ce"), [*TINY_ACDC, *overrides])
    exp, history, results = train_run(cfg, out, data_root=root, rank=rank, world_size=world_size)
    state = {k: v.detach().clone() for k, v in exp.model.state_dict().items()}
    kinds = sorted({type(m).__name__ for m in exp.model.modules() if "Norm" in type(m).__name__})
    return state, history, results["test"], kinds


@pytest.mark.ddp
def test_batchnorm_preset_two_processes_equal_one_process(data_root, tmp_path):
    """``acdc_ce`` (a BatchNorm UNet) in 2 gloo processes x 8 against 1 process x 16.

    BatchNorm is synchronised by default, so every layer sees the global batch; the recorded
    training loss is the mean over both ranks. With ``train.sync_batchnorm=false`` the run
    differs (each rank normalises by its own half of the batch).
    """
    from tests.conftest import require_dataset

    require_dataset(data_root, "acdc", "ACDC_training_volumes")
    root = str(data_root)
    ref_state, ref_hist, ref_test, ref_kinds = _acdc_run(
        0, 1, root, tmp_path / "one", ["train.batch_size=16"]
    )
    assert ref_kinds == ["BatchNorm2d"]
    results = run_ddp(_acdc_worker, world_size=2, args=(root, str(tmp_path / "two")))
    for (state, history, test, kinds), plain in results:
        assert kinds == ["SyncBatchNorm"]
        assert [h["train"]["steps"] for h in history] == [2, 2]
        for rec, ref in zip(history, ref_hist, strict=True):
            # the global mean over ranks (rank 0's own mean differs: different samples)
            assert rec["train"]["loss"] == pytest.approx(ref["train"]["loss"], rel=1e-5)
            assert rec["val"]["dice"] == pytest.approx(ref["val"]["dice"], rel=1e-5, abs=1e-7)
        for name, value in ref_state.items():
            torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)
        assert test["nll"] == pytest.approx(ref_test["nll"], rel=1e-4)
        differ = [k for k, v in ref_state.items() if not torch.allclose(plain[k], v, rtol=1e-3)]
        assert len(differ) > len(ref_state) // 2, differ
    assert untimed(results[0][0][1]) == untimed(results[1][0][1])  # every rank: one history


def _acdc_worker(rank, world_size, root, out):
    synced = _acdc_run(rank, world_size, root, out, ["train.batch_size=8"])
    off = ["train.batch_size=8", "train.sync_batchnorm=false"]
    plain = _acdc_run(rank, world_size, root, out + "_plain", off)
    return synced, plain[0]


class _Halt(Exception):
    pass


def _loss_problem(rank, world_size, n=16):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 3, generator=g)
    y = (x[:, 0] > 0).long()
    x[::2] *= 4  # the two ranks see samples of different scale: their losses differ
    data = torch.utils.data.TensorDataset(x[:n], y[:n])
    val = torch.utils.data.TensorDataset(x[16:], y[16:])
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=4 // world_size,
        sampler=EpochSampler(len(data), seed=0, rank=rank, world_size=world_size, pad=False),
    )  # unpadded, as calibrant.experiment builds it
    sampler = EpochSampler(len(val), shuffle=False, rank=rank, world_size=world_size, pad=False)
    val_loader = torch.utils.data.DataLoader(val, batch_size=4, sampler=sampler)
    return model, opt, loader, val_loader


def _fit(rank, world_size, ckpt, *, resume=False, halt_at=None, n=16):
    import torchmetrics

    model, opt, loader, val_loader = _loss_problem(rank, world_size, n)

    def step_log(step, total, running):
        if halt_at is not None and step == halt_at:
            raise _Halt  # after the checkpoint of step halt_at - 1 (every 2 steps)

    metrics = {"acc": torchmetrics.classification.MulticlassAccuracy(2, average="micro")}
    return fit(
        model,
        loader,
        val_loader,
        nn.CrossEntropyLoss(),
        opt,
        epochs=2,
        metrics=metrics,
        select="acc",
        checkpoint_dir=ckpt,
        checkpoint_every=2 if ckpt else 0,
        resume=resume,
        step_log=step_log,
    )


def _odd_worker(rank, world_size):
    model, opt, loader, val_loader = _loss_problem(rank, world_size, 15)
    out = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        out.append(train_one_epoch(model, loader, nn.CrossEntropyLoss(), opt)["loss"])
    return [p.detach().clone() for p in model.parameters()], out


def _loss_worker(rank, world_size, tmp):
    model, _, loader, _ = _loss_problem(rank, world_size)
    with torch.no_grad():  # this rank's own mean loss over the epoch (the model is fixed)
        own = [float(nn.functional.cross_entropy(model.module(x), y)) for x, y in loader]
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    recorded = train_one_epoch(model, loader, nn.CrossEntropyLoss(), frozen)["loss"]
    whole = _fit(rank, world_size, None)
    try:
        _fit(rank, world_size, f"{tmp}/ckpt", halt_at=3)
    except _Halt:
        pass
    resumed = _fit(rank, world_size, f"{tmp}/ckpt", resume=True)
    return sum(own) / len(own), recorded, whole, resumed


@pytest.mark.ddp
def test_recorded_training_loss_is_the_global_mean_and_resumes_exactly(tmp_path):
    """The epoch loss is the mean over all ranks' steps (it was rank 0's own mean), also after
    a resume from a mid-epoch checkpoint (rank 0 writes it, every rank resumes from it)."""
    single = _fit(0, 1, None)
    results = run_ddp(_loss_worker, world_size=2, args=(str(tmp_path),))
    rank_means = [r[0] for r in results]
    assert abs(rank_means[0] - rank_means[1]) > 0.1  # the ranks' own means differ
    (_, recorded0, whole0, resumed0), (_, recorded1, whole1, resumed1) = results
    assert recorded0 == recorded1 == pytest.approx(sum(rank_means) / 2, rel=1e-12)
    for whole, resumed in ((whole0, resumed0), (whole1, resumed1)):
        for rec, ref, res in zip(whole, single, resumed, strict=True):
            assert rec["train"]["loss"] == pytest.approx(ref["train"]["loss"], rel=1e-6)
            assert res["train"]["loss"] == pytest.approx(rec["train"]["loss"], rel=1e-12)


@pytest.mark.ddp
def test_odd_dataset_two_processes_equal_one_process_no_sample_counts_twice():
    """Issue 16 item 12: 15 samples, global batches of 4 (2 + 2), so the last one holds 3
    (2 + 1). The padded sampler repeated a sample there (a real difference from one process,
    which then grows under SGD momentum); unpadded, with each rank weighted by its share of
    the short batch, DDP equals one process to rounding."""
    ref_params, ref_losses = _odd_worker(0, 1)
    for params, losses in run_ddp(_odd_worker, world_size=2):
        assert losses == pytest.approx(ref_losses, rel=1e-6)
        for p, q in zip(params, ref_params, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_rank_left_without_a_batch_is_an_error():
    # 13 samples, 2 ranks x 2: the last global batch holds 1, so rank 1 would have one step
    # fewer than rank 0 and DDP would wait for it forever
    model, opt, _, val_loader = _loss_problem(0, 1, 13)
    data = torch.utils.data.TensorDataset(torch.randn(13, 3), torch.zeros(13, dtype=torch.long))
    sampler = EpochSampler(13, rank=0, world_size=2, pad=False)
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler)
    with pytest.raises(ValueError, match="no batch.*train.batch_size"):
        fit(model, loader, val_loader, nn.CrossEntropyLoss(), opt, epochs=1, metrics={}, select="x")
