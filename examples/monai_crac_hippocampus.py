"""CRaC on MSD Hippocampus with MONAI's workflow: SupervisedTrainer, SupervisedEvaluator, DynUNet.

The batches follow MONAI's conventions: dictionaries ``{"image": (B, 1, X, Y, Z), "label":
(B, 1, X, Y, Z)}`` with float labels. calibrant's CRaC criterion (CE plus the class- and
region-adaptive NACL penalty) takes them through :class:`calibrant.integrations.MonaiTargets`, and
:class:`calibrant.integrations.monai.ALMHandler` on the evaluator observes the validation logits
and steps the multipliers after each validation pass, putting λ and ρ per named slot into
``evaluator.state.metrics`` where MONAI's ``StatsHandler`` prints them.

Run (CPU scale; the data root holds ``msd_hippocampus/``)::

    python examples/monai_crac_hippocampus.py --data ../shared/data --epochs 5

Training uses random 32³ patches (calibrant's :class:`~calibrant.data.msd.MSDPatches`, positions
drawn from a seeded generator), validation whole volumes (the DynUNet wrapper pads them to a
multiple of its strides and crops the logits back).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, StatsHandler, ValidationHandler
from torch.utils.data import DataLoader, Dataset

from calibrant import LOSSES, MODELS
from calibrant.data.base import IndexedSubset
from calibrant.data.msd import HIPPOCAMPUS_CLASSES, MSDPatches, MSDVolumes, dataset_dir
from calibrant.engine import EpochSampler
from calibrant.integrations import MonaiTargets
from calibrant.integrations.monai import ALMHandler

NUM_CLASSES = len(HIPPOCAMPUS_CLASSES)


class MonaiDict(Dataset):
    """calibrant's ``(image, label)`` items as MONAI dictionaries with ``(1, *spatial)`` labels."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label = self.dataset[index]
        return {"image": image, "label": label[None].float()}


def hippocampus(
    root,
    *,
    train_cases: int | None = None,
    val_cases: int | None = None,
    patch_size=(32, 32, 32),
    seed: int = 0,
):
    """Training patches and validation volumes of the seeded 70/10/20 case split."""
    folder = dataset_dir(root, "msd_hippocampus", expected="imagesTr/ and labelsTr/")
    train_vols = MSDVolumes(folder, "train", name="msd_hippocampus")
    val = MSDVolumes(folder, "val", name="msd_hippocampus")
    g = torch.Generator().manual_seed(seed)
    train = MSDPatches(train_vols, patch_size=patch_size, generator=g)
    if train_cases is not None:
        train = IndexedSubset(train, list(range(min(train_cases, len(train)))))
    if val_cases is not None:
        val = IndexedSubset(val, list(range(min(val_cases, len(val)))))
    return train, val


def build(*, filters=(8, 16, 32, 32), lr: float = 2e-3, seed: int = 0):
    """DynUNet (3D, instance norm, residual blocks), CRaC for 3 classes, Adam."""
    torch.manual_seed(seed)
    net = MODELS.build(
        "dynunet", in_channels=1, num_classes=NUM_CLASSES, spatial_dims=3,
        strides=(1, 2, 2, 2), filters=filters,
    )  # fmt: skip
    crac = LOSSES.build("crac", num_classes=NUM_CLASSES)
    return net, crac, torch.optim.Adam(net.parameters(), lr=lr)


def run(net, crac, optimizer, train, val, *, epochs: int, batch_size: int = 4, seed: int = 0):
    """Train with MONAI's SupervisedTrainer; returns ``(trainer, evaluator, alm_handler)``."""
    loss = MonaiTargets(crac)  # takes MONAI's (B, 1, X, Y, Z) float labels
    sampler = EpochSampler(len(train), seed=seed)
    train_loader = DataLoader(MonaiDict(train), batch_size=batch_size, sampler=sampler)
    val_loader = DataLoader(MonaiDict(val), batch_size=1)

    def dice_inputs(output):  # logits -> one-hot prediction, labels -> one-hot, for MeanDice
        pred, label = output["pred"], output["label"]
        oh = torch.nn.functional.one_hot
        y_pred = oh(pred.argmax(1), NUM_CLASSES).movedim(-1, 1)
        return y_pred, oh(label[:, 0].long(), NUM_CLASSES).movedim(-1, 1)

    alm = ALMHandler(loss, class_names=HIPPOCAMPUS_CLASSES)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=val_loader,
        network=net,
        key_val_metric={
            "val_dice": MeanDice(include_background=False, output_transform=dice_inputs)
        },
        val_handlers=[alm, StatsHandler(iteration_log=False)],  # ALM first: StatsHandler prints λ
        decollate=False,  # keep the batched logits for the ALM terms
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=train_loader,
        network=net,
        optimizer=optimizer,
        loss_function=loss,
        train_handlers=[ValidationHandler(interval=1, validator=evaluator)],
        decollate=False,
        optim_set_to_none=True,
    )
    # calibrant's EpochSampler: the patch order of epoch e is a function of (seed, e)
    trainer.add_event_handler(
        Events.EPOCH_STARTED, lambda engine: sampler.set_epoch(engine.state.epoch - 1)
    )
    trainer.run()
    return trainer, evaluator, alm


def main(argv: list[str] | None = None) -> dict:
    """Train; returns the ALM handler's λ/ρ records and the evaluator's last metrics."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("CALIBRANT_DATA"), help="data root")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--train-cases", type=int, default=None, help="a subset, for a quick run")
    p.add_argument("--val-cases", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, force=True)

    train, val = hippocampus(
        args.data, train_cases=args.train_cases, val_cases=args.val_cases, seed=args.seed
    )
    net, crac, optimizer = build(seed=args.seed)
    _, evaluator, alm = run(
        net, crac, optimizer, train, val, epochs=args.epochs, batch_size=args.batch_size,
        seed=args.seed,
    )  # fmt: skip
    return {"records": alm.records, "metrics": dict(evaluator.state.metrics), "criterion": crac}


if __name__ == "__main__":
    main()
