"""ALMCallback with the real ``lightning`` package on CPU and real ACDC slices.

- the λ/ρ trajectory (and the trained weights) equal calibrant's own engine on the same data and
  seed, bitwise;
- checkpoint and resume under Lightning give bitwise-identical λ/ρ and weights;
- a 2-process ``ddp_spawn``/gloo run equals one process (with an uneven validation set, so the
  ``DistributedSampler`` padding is dropped);
- the example ``examples/lightning_crac_acdc.py`` runs for a few iterations.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

import lightning as L  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from calibrant import LOSSES  # noqa: E402
from calibrant.engine import fit  # noqa: E402
from calibrant.integrations import unpadded_count
from calibrant.integrations.lightning import ALMCallback  # noqa: E402
from calibrant.metrics import CalibrationError  # noqa: E402
from tests.conftest import require_dataset  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def example(monkeypatch):
    """The Lightning example as a module (examples/ on sys.path, so spawned ranks import it)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLES), *sys.path]))
    import lightning_crac_acdc

    return lightning_crac_acdc


@pytest.fixture
def acdc(data_root):
    return require_dataset(data_root, "acdc")


def _trainer(tmp_path, epochs, callbacks, **kw):
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=kw.pop("devices", 1),
        callbacks=callbacks,
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=kw.pop("num_sanity_val_steps", 0),
        **kw,
    )


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k


# -- unit level ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 5, 6, 7, 11])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_unpadded_count_matches_distributed_sampler(n, world):
    ds = list(range(n))
    for rank in range(world):
        loader = DataLoader(ds, sampler=DistributedSampler(ds, world, rank, shuffle=False))
        indices = list(loader.sampler)
        keep = unpadded_count(loader)
        keep = len(indices) if keep is None else keep
        # the kept prefixes of all ranks are every index exactly once
        assert indices[:keep] == list(range(rank, n, world))


def test_callback_needs_an_alm_term():
    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.criterion = LOSSES.build("ce")

    with pytest.raises(ValueError, match="holds no ALM term"):
        ALMCallback().setup(None, Plain(), "fit")


# -- real data ---------------------------------------------------------------------------------
def _small_loaders(example, acdc, **kw):
    kw = {"downsample": 4, "batch_size": 8, "train_slices": 16, "val_slices": 6, **kw}
    return example.acdc_loaders(acdc.parent, **kw)


def test_trajectory_equals_engine(example, acdc, tmp_path):
    module = example.build_module(seed=0)
    net, criterion = copy.deepcopy(module.net), copy.deepcopy(module.criterion)
    cb = ALMCallback()
    train, val = _small_loaders(example, acdc)
    _trainer(tmp_path, 3, [cb]).fit(module, train, val)

    train, val = _small_loaders(example, acdc)
    opt = torch.optim.Adam(net.parameters(), lr=module.lr)
    history = fit(
        net, train, val, criterion, opt,
        epochs=3, metrics={"ece": CalibrationError()}, select="ece", select_mode="min",
    )  # fmt: skip

    ours = cb.driver.terms[0].history()
    engine = criterion.parts["alm"].history()
    assert len(ours) == 3 and ours == engine  # λ, ρ and violations, bitwise
    assert [r["alm"]["alm0"] for r in history] == engine
    assert [rec["alm"] for rec in cb.records] == engine
    _assert_same_state(_params(module.net), _params(net))
    assert ours[-1]["lambda"] != ours[0]["lambda"]  # the multipliers moved


def test_logs_lambda_rho_per_named_slot(example, acdc, tmp_path):
    module = example.build_module(seed=0)
    cb = ALMCallback()
    train, val = _small_loaders(example, acdc, train_slices=8, val_slices=4)
    trainer = _trainer(tmp_path, 1, [cb], num_sanity_val_steps=2)
    trainer.fit(module, train, val)
    logged = trainer.callback_metrics
    term = module.criterion.parts["alm"]
    for r, region in enumerate(("inner", "boundary")):
        for c, name in enumerate(("background", "right_ventricle", "myocardium", "left_ventricle")):
            lam = logged[f"alm/lambda/{region}/{name}"]
            assert float(lam) == pytest.approx(float(term.lam[r, c]), rel=1e-6)
            assert f"alm/rho/{region}/{name}" in logged
    assert "val/ece" in logged and "val/dice" in logged  # torchmetrics metrics via self.log
    assert len(term.history()) == 1  # the sanity-check pass neither observed nor stepped

    before = term.lam.clone()
    trainer.validate(module, val, verbose=False)  # validate() never changes λ
    assert torch.equal(term.lam, before) and len(term.history()) == 1


class _ExternalCriterion(L.LightningModule):
    """The criterion is not a submodule: only the callback's state carries the multipliers."""

    def __init__(self, net, criterion):
        super().__init__()
        self.net = net
        self.losses = [criterion]  # a plain list: not in state_dict

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.losses[0](self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return self.net(x)  # the target is taken from the batch

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)


def _build(example, external: bool):
    module = example.build_module(seed=0)
    if not external:
        return module, ALMCallback()
    crit = LOSSES.build("crac", num_classes=4)
    return _ExternalCriterion(module.net, crit), ALMCallback(crit)


@pytest.mark.parametrize("external", [False, True], ids=["submodule", "external"])
def test_checkpoint_resume_is_bitwise_identical(example, acdc, tmp_path, external):
    def run(folder, epochs, resume=None):
        module, cb = _build(example, external)
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=folder, save_last=True)
        train, val = _small_loaders(example, acdc, train_slices=8, val_slices=4)
        trainer = _trainer(folder, epochs, [cb, ckpt], enable_checkpointing=True)
        trainer.fit(module, train, val, ckpt_path=resume)
        return module, cb

    full, full_cb = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    last = tmp_path / "part" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert any("ALMCallback" in k for k in saved["callbacks"])
    resumed, resumed_cb = run(tmp_path / "part", 4, resume=last)

    a, b = full_cb.driver.terms[0], resumed_cb.driver.terms[0]
    assert len(a.history()) == 4 and a.history() == b.history()
    assert full_cb.records == resumed_cb.records
    _assert_same_state(a.state_dict(), b.state_dict())
    _assert_same_state(_params(full.net), _params(resumed.net))


# -- DDP ---------------------------------------------------------------------------------------
class _Dump(L.Callback):
    """Each rank saves its ALM history and weights at the end of fit (ddp_spawn ranks)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer, pl_module) -> None:
        alm = next(c for c in trainer.callbacks if isinstance(c, ALMCallback))
        out = {"history": alm.driver.terms[0].history(), "params": _params(pl_module.net)}
        torch.save(out, os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))


def _ddp_loaders(example, acdc, world):
    train, val = _small_loaders(example, acdc, train_slices=16, val_slices=5, batch_size=8)
    val = DataLoader(val.dataset, batch_size=2, shuffle=False)  # 5 slices: rank 1 is padded
    if world == 1:
        return train, val
    # Lightning shuffles DDP training with DistributedSampler(seed=0): epoch e draws the same
    # permutation as the one-process EpochSampler(seed=0), so step s sees the same 8 slices
    return DataLoader(train.dataset, batch_size=8 // world, shuffle=False), val


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_spawn_equals_one_process(example, acdc, tmp_path):
    # SGD with a small step: Adam's first steps are about lr·sign(g), which turns the float
    # rounding of near-zero gradients (a mean of two half-batch means) into lr-sized
    # differences, and a large SGD step amplifies rounding too; this keeps the runs within it
    single, cb = example.build_module(seed=0, lr=0.005, optimizer="sgd"), ALMCallback()
    train, val = _ddp_loaders(example, acdc, 1)
    _trainer(tmp_path, 2, [cb]).fit(single, train, val)

    module = example.build_module(seed=0, lr=0.005, optimizer="sgd")
    train, val = _ddp_loaders(example, acdc, 2)
    trainer = _trainer(
        tmp_path, 2, [ALMCallback(), _Dump(str(tmp_path))], devices=2, strategy="ddp_spawn"
    )
    trainer.fit(module, train, val)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["history"] == ranks[1]["history"]  # every rank holds the same λ and ρ
    ref = cb.driver.terms[0].history()
    for got, want in zip(ranks[0]["history"], ref, strict=True):
        for key in ("lambda", "rho", "violation"):
            # the same sums over the same pixels; only the training gradients' float rounding
            # (mean of two half-batch means) differs
            torch.testing.assert_close(
                torch.tensor(got[key]), torch.tensor(want[key]), rtol=1e-5, atol=1e-9
            )
    for k, v in _params(single.net).items():
        torch.testing.assert_close(ranks[0]["params"][k], v, rtol=1e-4, atol=1e-5)


# -- the example -------------------------------------------------------------------------------
def test_lightning_example_runs(example, acdc, tmp_path):
    out = example.main(
        [
            "--data", str(acdc.parent), "--out", str(tmp_path), "--epochs", "2",
            "--train-slices", "16", "--val-slices", "6",
        ]
    )  # fmt: skip
    assert len(out["records"]) == 2
    assert "alm/lambda/boundary/left_ventricle" in out["metrics"]
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    csv = next(tmp_path.glob("lightning_logs/version_*/metrics.csv")).read_text()
    assert "alm/rho/inner/myocardium" in csv.splitlines()[0]
    # resume continues the trajectory from the checkpoint
    again = example.main(
        [
            "--data", str(acdc.parent), "--out", str(tmp_path), "--epochs", "3",
            "--train-slices", "16", "--val-slices", "6", "--resume",
        ]
    )  # fmt: skip
    assert len(again["records"]) == 3 and again["records"][:2] == out["records"]
