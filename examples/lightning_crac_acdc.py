"""CRaC on ACDC slices with PyTorch Lightning: a small LightningModule and calibrant's callback.

The LightningModule is plain Lightning: the criterion is calibrant's CRaC preset (CE plus the
class- and region-adaptive NACL penalty), ``training_step`` logs each part of the loss, and
``validation_step`` returns the logits and targets. Everything ALM-specific (observe on the
validation batches, the multiplier step at each validation end, λ/ρ per named slot in the logs,
the multipliers in the checkpoint, DDP) is done by
:class:`calibrant.integrations.lightning.ALMCallback`. calibrant's calibration and overlap metrics
are torchmetrics metrics, so ``self.log`` takes them as they are.

Run (CPU scale; the data root holds ``acdc/``)::

    python examples/lightning_crac_acdc.py --data ../shared/data --epochs 5 --out runs/lit_crac
    python examples/lightning_crac_acdc.py ... --devices 2 --strategy ddp_spawn   # 2 CPU ranks

The logged scalars go to ``OUT/lightning_logs/version_*/metrics.csv`` (a TensorBoard logger works
the same way); checkpoints to ``OUT/checkpoints``; ``--resume`` continues from ``last.ckpt``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning as L
import torch

from calibrant import LOSSES, MODELS
from calibrant.data.acdc import ACDC_CLASSES, ACDCSlices
from calibrant.data.base import IndexedSubset
from calibrant.engine import EpochSampler, loss_terms
from calibrant.integrations.lightning import ALMCallback
from calibrant.metrics import CalibrationError
from calibrant.metrics.segmentation import DiceScore


class CalibratedSegmenter(L.LightningModule):
    """A segmentation LightningModule whose criterion may hold calibrant ALM terms.

    Args:
        net: the network (logits ``(B, C, H, W)``).
        criterion: a calibrant loss or ALM preset (called as ``criterion(logits, target)``).
        num_classes: number of classes (for the Dice metric).
        lr: learning rate.
        class_names: names of the classes (used by :class:`ALMCallback` for the slot names).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
    """

    def __init__(
        self, net, criterion, num_classes: int, lr: float = 2e-3, class_names=None,
        optimizer: str = "adam",
    ):  # fmt: skip
        super().__init__()
        self.net, self.criterion, self.lr, self.optimizer = net, criterion, lr, optimizer
        self.class_names = class_names
        self.val_ece = CalibrationError(n_bins=15)
        self.val_dice = DiceScore(num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the network."""
        return self.net(x)

    def training_step(self, batch, batch_idx):
        """The criterion's parts, logged; their sum is the loss (as calibrant's engine)."""
        x, y = batch
        terms = loss_terms(self.criterion, self(x), y)  # {"ce": ..., "alm": ...} for CRaC
        loss = sum(terms.values())
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        """Metrics through ``self.log``; the logits and targets go to :class:`ALMCallback`."""
        x, y = batch
        logits = self(x).float()
        self.val_ece.update(logits, y)
        self.val_dice.update(logits, y)
        self.log("val/ece", self.val_ece, on_epoch=True)
        self.log("val/dice", self.val_dice, on_epoch=True)
        return {"logits": logits, "target": y}  # what ALMCallback observes

    def configure_optimizers(self):
        """Adam (default) or SGD with momentum."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9)
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


def acdc_loaders(
    root,
    *,
    downsample: int = 4,
    batch_size: int = 8,
    train_slices: int | None = None,
    val_slices: int | None = None,
    seed: int = 0,
):
    """ACDC training and validation slices (patient split of the literature) as DataLoaders.

    The training order of epoch ``e`` is a seeded permutation (:class:`EpochSampler`; Lightning
    calls its ``set_epoch``), so runs and resumed runs see the same batches.
    """
    opts = dict(size=(192, 192), downsample=downsample)
    train, val = ACDCSlices(root, "train", **opts), ACDCSlices(root, "val", **opts)
    if train_slices is not None:
        step = max(len(train) // train_slices, 1)
        train = IndexedSubset(train, list(range(0, len(train), step))[:train_slices])
    if val_slices is not None:
        step = max(len(val) // val_slices, 1)
        val = IndexedSubset(val, list(range(0, len(val), step))[:val_slices])
    g = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(
        train, batch_size=batch_size, sampler=EpochSampler(len(train), seed=seed), generator=g
    )
    val_loader = torch.utils.data.DataLoader(val, batch_size=batch_size)
    return train_loader, val_loader


def build_module(
    *, base_channels: int = 8, depth: int = 3, lr: float = 2e-3, seed: int = 0, optimizer="adam"
):
    """A 2D UNet with CRaC (CE + region/class-adaptive NACL penalty, multipliers by ALM)."""
    torch.manual_seed(seed)
    net = MODELS.build(
        "unet2d", in_channels=1, num_classes=4, base_channels=base_channels, depth=depth,
        norm="instance",
    )  # fmt: skip
    criterion = LOSSES.build("crac", num_classes=4)
    names = list(ACDC_CLASSES)
    return CalibratedSegmenter(net, criterion, 4, lr=lr, class_names=names, optimizer=optimizer)


def main(argv: list[str] | None = None) -> dict:
    """Train; returns the callback's λ/ρ records and the last logged metrics."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("CALIBRANT_DATA"), help="data root")
    p.add_argument("--out", default="runs/lightning_crac_acdc")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--downsample", type=int, default=4, help="192x192 slices reduced by this")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-slices", type=int, default=None, help="a subset, for a quick run")
    p.add_argument("--val-slices", type=int, default=None)
    p.add_argument("--limit-train-batches", type=float, default=1.0)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="auto", help="e.g. ddp_spawn with --devices 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last")
    args = p.parse_args(argv)

    train_loader, val_loader = acdc_loaders(
        args.data,
        downsample=args.downsample,
        batch_size=args.batch_size,
        train_slices=args.train_slices,
        val_slices=args.val_slices,
        seed=args.seed,
    )
    module = build_module(seed=args.seed)
    out = Path(args.out)
    alm = ALMCallback()  # finds module.criterion's ALM terms, names slots by module.class_names
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "checkpoints", save_last=True)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        callbacks=[alm, ckpt],
        logger=L.pytorch.loggers.CSVLogger(out),
        default_root_dir=out,
        limit_train_batches=args.limit_train_batches,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    last = out / "checkpoints" / "last.ckpt"
    trainer.fit(module, train_loader, val_loader, ckpt_path=last if args.resume else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in ("val/dice", "val/ece", "alm/lambda/boundary/LV", "alm/rho/boundary/LV"):
        if name in metrics:
            print(f"{name} = {metrics[name]:.4g}")
    return {"records": alm.records, "metrics": metrics, "module": module}


if __name__ == "__main__":
    main()
