r"""A PyTorch Lightning callback for calibrant's ALM methods (CRaC, CALS-ALM, CALS-HR, NACL).

:class:`ALMCallback` does, inside ``Trainer.fit``, what calibrant's own loop does with the ALM
terms of the criterion (:func:`calibrant.engine.fit`):

- every validation batch: each ALM term ``observe``-s the batch's logits and targets, taken from
  what ``validation_step`` returns (``{"logits": ..., "target": ...}``, a ``(logits, target)``
  pair, or the logits alone with the target from the batch) or from the module's
  ``alm_inputs(outputs, batch)`` hook, or from the ``extract`` function given here;
- at the end of each validation pass: each term's ``step()`` (one ``all_reduce`` under DDP, so
  all ranks hold the same λ and ρ), then ``self.log`` of λ and ρ per named slot
  (``alm/lambda/inner/LV``, ``alm/rho/boundary/RV``, ...);
- the terms' state (λ, ρ, statistics, history) goes into Lightning's checkpoint (the callback's
  ``state_dict``; it is also in the module's ``state_dict`` when the criterion is a submodule)
  and comes back on ``Trainer.fit(ckpt_path=...)``.

The sanity-check pass and ``Trainer.validate``/``test`` never change λ: only validation inside
``fit`` is observed.

Exact under DDP: the terms sum their statistics over ranks in float64. Lightning's
``DistributedSampler`` pads the validation set so that every rank gets as many samples; the
callback drops those repeated samples (the tail of the ranks whose share ends past the dataset),
so each validation sample is observed exactly once, as in one process. This assumes the logits
the module hands over have one row per dataset item (the leading dim); pass ``trim_padding=False``
otherwise (and an unpadded validation sampler).

Example:
    .. code-block:: python

        import lightning as L
        from calibrant import LOSSES
        from calibrant.integrations.lightning import ALMCallback

        class Seg(L.LightningModule):
            def __init__(self, net):
                super().__init__()
                self.net = net
                self.criterion = LOSSES.build("crac", num_classes=4)

            def training_step(self, batch, batch_idx):
                x, y = batch
                return self.criterion(self.net(x), y)

            def validation_step(self, batch, batch_idx):
                x, y = batch
                return {"logits": self.net(x), "target": y}

        trainer = L.Trainer(callbacks=[ALMCallback(class_names=["BG", "RV", "MYO", "LV"])])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from calibrant.integrations import _require
from calibrant.integrations._alm import ALMDriver

_pl = _require("lightning.pytorch", "lightning", "calibrant.integrations.lightning")
from lightning.pytorch.trainer.states import TrainerFn  # noqa: E402  (after the clear ImportError)

__all__ = ["ALMCallback"]

Extract = Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]]


def _batch_target(batch: Any) -> torch.Tensor:
    if isinstance(batch, Mapping):
        for key in ("target", "label", "labels", "y", "mask"):
            if key in batch:
                return batch[key]
        raise ValueError(f"cannot find the target in the batch's keys {sorted(batch)}")
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[1]
    raise ValueError("cannot find the target in the batch: return it from validation_step")


class ALMCallback(_pl.Callback):
    """Drive the ALM terms of a LightningModule's criterion: observe, step, log, checkpoint.

    Args:
        criterion: the module holding the ALM terms; default: the LightningModule's attribute
            ``criterion_attr`` if it exists, else the whole LightningModule.
        criterion_attr: attribute name of the criterion on the LightningModule.
        class_names: names of the classes for the logged slot names (default: the module's
            ``class_names`` attribute if any, else ``class 0``, ...).
        logits_key: key of the logits in a mapping returned by ``validation_step``.
        target_key: key of the target there (when missing, the target is taken from the batch:
            ``batch[1]`` or ``batch["target" | "label" | ...]``).
        extract: ``extract(outputs, batch) -> (logits, target)``, overriding the above.
        dataloader_idx: the validation dataloader that is observed (the others are not).
        log: log λ and ρ per slot with ``pl_module.log`` at each validation end.
        log_prefix: prepended to the logged names (``"alm/lambda/..."`` by default).
        trim_padding: drop the samples Lightning's ``DistributedSampler`` repeats (see the
            module docstring).

    Attributes:
        driver: the :class:`~calibrant.integrations.ALMDriver` (after ``setup``).
        records: per validation pass, the terms' step records by term name.
    """

    def __init__(
        self,
        criterion: nn.Module | None = None,
        *,
        criterion_attr: str = "criterion",
        class_names: Sequence[str] | None = None,
        logits_key: str = "logits",
        target_key: str = "target",
        extract: Extract | None = None,
        dataloader_idx: int = 0,
        log: bool = True,
        log_prefix: str = "",
        trim_padding: bool = True,
    ) -> None:
        super().__init__()
        self.criterion = criterion
        self.criterion_attr = criterion_attr
        self.class_names = class_names
        self.logits_key, self.target_key = logits_key, target_key
        self.extract = extract
        self.dataloader_idx = dataloader_idx
        self.log_values, self.log_prefix, self.trim_padding = log, log_prefix, trim_padding
        self.driver: ALMDriver | None = None
        self.records: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None

    # -- set-up -------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        """Find the ALM terms (once the module exists)."""
        criterion = self.criterion
        if criterion is None:
            criterion = getattr(pl_module, self.criterion_attr, None)
            if not isinstance(criterion, nn.Module):
                criterion = pl_module
        names = self.class_names
        if names is None:
            names = getattr(pl_module, "class_names", None)
        self.driver = ALMDriver(criterion, class_names=names)
        if self._pending is not None:
            self.load_state_dict(self._pending)

    def on_fit_start(self, trainer, pl_module) -> None:
        """Put terms that are not submodules of the LightningModule on its device."""
        for term in self.driver.terms:
            term.to(pl_module.device)

    def _active(self, trainer) -> bool:
        fitting = trainer.state.fn == TrainerFn.FITTING
        return self.driver is not None and fitting and not trainer.sanity_checking

    # -- validation ---------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        """Start the pass (working out this rank's real samples under DDP padding)."""
        if not self._active(trainer):
            return
        loader = None
        if self.trim_padding and trainer.world_size > 1:
            loader = trainer.val_dataloaders
            if isinstance(loader, Mapping):
                loader = list(loader.values())
            if isinstance(loader, Sequence):
                loader = loader[self.dataloader_idx] if len(loader) > self.dataloader_idx else None
        self.driver.begin_pass(loader)

    def _inputs(self, pl_module, outputs, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.extract is not None:
            return self.extract(outputs, batch)
        hook = getattr(pl_module, "alm_inputs", None)
        if callable(hook):
            return hook(outputs, batch)
        if isinstance(outputs, Mapping):
            if self.logits_key not in outputs:
                raise ValueError(
                    f"validation_step returned keys {sorted(outputs)} without "
                    f"{self.logits_key!r}; return the logits under that key (ALMCallback "
                    "logits_key) or pass extract="
                )
            target = outputs.get(self.target_key)
            return outputs[self.logits_key], target if target is not None else _batch_target(batch)
        if isinstance(outputs, (list, tuple)) and len(outputs) == 2:
            return outputs[0], outputs[1]
        if isinstance(outputs, torch.Tensor):
            return outputs, _batch_target(batch)
        raise ValueError(
            "ALMCallback needs the validation logits: return {'logits': ..., 'target': ...} "
            "(or the logits) from validation_step, define alm_inputs(outputs, batch) on the "
            "module, or pass extract=(outputs, batch) -> (logits, target)"
        )

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Every ALM term observes the batch's logits and targets."""
        if not self._active(trainer) or dataloader_idx != self.dataloader_idx:
            return
        logits, target = self._inputs(pl_module, outputs, batch)
        self.driver.observe(logits, target)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        """One ``step()`` per term (synchronised over ranks), then log λ and ρ per slot."""
        if not self._active(trainer):
            return
        records = self.driver.step()
        self.records.append(dict(zip(self.driver.names, records, strict=True)))
        if self.log_values:
            values = {self.log_prefix + k: v for k, v in self.driver.scalars().items()}
            # the values are equal on every rank; sync_dist (a mean of equal values) is exact
            pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=True)

    # -- checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The ALM terms' state and the step records (saved in Lightning's checkpoint)."""
        if self.driver is None:
            return dict(self._pending or {})
        return {"terms": self.driver.state_dict(), "records": list(self.records)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the terms (after ``setup``; kept until then when called earlier)."""
        if self.driver is None:
            self._pending = dict(state_dict)
            return
        self._pending = None
        if "terms" in state_dict:
            self.driver.load_state_dict(state_dict["terms"])
        self.records = list(state_dict.get("records", []))
