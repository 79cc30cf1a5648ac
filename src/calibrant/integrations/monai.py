r"""An Ignite handler that drives calibrant's ALM terms from a MONAI ``SupervisedEvaluator``.

MONAI's workflows are Ignite engines: a ``SupervisedTrainer`` trains, and a
``SupervisedEvaluator`` (run by the trainer's ``ValidationHandler``) validates. Attached to the
evaluator, :class:`ALMHandler` does what calibrant's engine does with the ALM terms of the
criterion (:func:`calibrant.engine.fit`):

- ``Events.EPOCH_STARTED``: start the pass (under DDP, learn which samples the sampler repeats);
- ``Events.ITERATION_COMPLETED``: every ALM term ``observe``-s the iteration's logits and labels
  (``engine.state.output["pred"]`` and ``["label"]``, batched or decollated, MetaTensors or not,
  labels ``(B, 1, *spatial)``, one-hot or calibrant's ``(B, *spatial)``);
- ``Events.EPOCH_COMPLETED``: every term's ``step()`` (one ``all_reduce`` under
  ``torch.distributed``), then λ and ρ per named slot go into ``engine.state.metrics``
  (``alm/lambda/inner/anterior``, ...), where MONAI's ``StatsHandler`` and
  ``TensorBoardStatsHandler`` find them (list them after this handler).

The terms' state travels in the criterion's ``state_dict`` (put the trainer's ``loss_function``
in ``CheckpointSaver``'s ``save_dict``) or in this handler's own ``state_dict``.

The observed ``pred`` must be the network's logits: apply activations and discretisation in
metrics' ``output_transform`` rather than in the evaluator's ``postprocessing``, or pass an
``output_transform`` here that picks the logits.

Example:
    .. code-block:: python

        from monai.engines import SupervisedEvaluator, SupervisedTrainer
        from monai.handlers import ValidationHandler
        from calibrant import LOSSES
        from calibrant.integrations import MonaiTargets
        from calibrant.integrations.monai import ALMHandler

        loss = MonaiTargets(LOSSES.build("crac", num_classes=3))  # (B, 1, ...) labels
        evaluator = SupervisedEvaluator(device, val_loader, net, decollate=False,
                                        val_handlers=[ALMHandler(loss)])
        trainer = SupervisedTrainer(device, epochs, train_loader, net, opt, loss,
                                    train_handlers=[ValidationHandler(1, evaluator)])
        trainer.run()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from calibrant.integrations import _require
from calibrant.integrations._alm import ALMDriver

_ignite = _require("ignite.engine", "monai", "calibrant.integrations.monai")
Events = _ignite.Events

__all__ = ["ALMHandler", "pred_label"]


def _stack(items: Sequence[Any], key: str) -> torch.Tensor:
    return torch.stack([item[key] for item in items])


def pred_label(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, label)`` from a MONAI engine's ``state.output``: a dict, or decollated items."""
    if isinstance(output, Mapping):
        return output["pred"], output["label"]
    if isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
        return _stack(output, "pred"), _stack(output, "label")
    if isinstance(output, Sequence) and len(output) == 2:
        return output[0], output[1]
    raise ValueError(
        "cannot find the logits and labels in the engine output; pass "
        "output_transform=lambda output: (logits, labels)"
    )


class ALMHandler:
    """Attach calibrant's ALM ``observe``/``step`` to a MONAI evaluator (an Ignite engine).

    Args:
        criterion: the module holding the ALM terms (usually the trainer's ``loss_function``,
            e.g. a :class:`~calibrant.integrations.MonaiTargets`-wrapped ALM objective).
        output_transform: ``engine.state.output -> (logits, labels)``; default
            :func:`pred_label`.
        class_names: class names for the logged slot names.
        metrics_prefix: prepended to the names written into ``engine.state.metrics``.
        trim_padding: drop the samples a padding ``DistributedSampler`` repeats (the logits must
            then have one row per dataset item); MONAI's ``DistributedSampler(even_divisible=
            False)`` pads nothing.

    Attributes:
        driver: the :class:`~calibrant.integrations.ALMDriver`.
        records: per validation pass, the terms' step records by term name.
    """

    def __init__(
        self,
        criterion: nn.Module,
        *,
        output_transform: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] = pred_label,
        class_names: Sequence[str] | None = None,
        metrics_prefix: str = "",
        trim_padding: bool = True,
    ) -> None:
        self.driver = ALMDriver(criterion, class_names=class_names)
        self.output_transform = output_transform
        self.metrics_prefix = metrics_prefix
        self.trim_padding = trim_padding
        self.records: list[dict[str, Any]] = []

    def attach(self, engine) -> None:
        """Register on the evaluator's epoch start, iteration end and epoch end."""
        if hasattr(engine, "optimizer") and hasattr(engine, "loss_function"):
            raise ValueError(
                "attach ALMHandler to the SupervisedEvaluator that validates the trainer (the "
                "ALM terms observe validation batches), not to the SupervisedTrainer"
            )
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine) -> None:
        """Start a validation pass."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        loader = getattr(engine, "data_loader", None) if self.trim_padding and distributed else None
        self.driver.begin_pass(loader)

    def iteration_completed(self, engine) -> None:
        """Every ALM term observes the iteration's logits and labels."""
        logits, labels = self.output_transform(engine.state.output)
        self.driver.observe(logits, labels)

    def epoch_completed(self, engine) -> None:
        """Step every ALM term; λ and ρ per slot into ``engine.state.metrics``."""
        records = self.driver.step()
        self.records.append(dict(zip(self.driver.names, records, strict=True)))
        for name, value in self.driver.scalars().items():
            engine.state.metrics[self.metrics_prefix + name] = value

    def state_dict(self) -> dict[str, Any]:
        """The ALM terms' state and the step records (for ``CheckpointSaver``'s ``save_dict``)."""
        return {"terms": self.driver.state_dict(), "records": list(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.driver.load_state_dict(state["terms"])
        self.records = list(state.get("records", []))
