"""``fit``: the loop over epochs (see :mod:`calibrant.engine` for what one epoch does)."""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from calibrant import distributed as dist_utils
from calibrant.alm.term import alm_terms
from calibrant.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from calibrant.engine.inference import evaluate
from calibrant.engine.steps import (
    Callback,
    EpochSampler,
    _average_over_ranks,
    _check_equal_steps,
    train_one_epoch,
)

logger = logging.getLogger(__name__)


@dataclass
class _RunState:
    """Where a :func:`fit` run stands: its progress, selection and history (not its objects).

    Every checkpoint stores these fields at its top level, beside the objects' state dicts, and
    a resumed run starts from them.

    Attributes:
        epoch: epochs done.
        step: optimiser steps done in the current epoch (0 between epochs).
        global_step: optimiser steps done since the run started.
        totals: the current epoch's running sums of the loss terms (see :func:`train_one_epoch`).
        best: best value of the selection metric so far (``None`` before the first validation).
        best_epoch: the epoch (1-based) that reached ``best`` (0 before).
        history: the per-epoch records.
    """

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    totals: dict[str, Any] = field(default_factory=dict)
    best: float | None = None
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def end_epoch(
        self, record: dict[str, Any], score: float, better: Callable[[float, float], bool]
    ) -> bool:
        """Add the epoch's record and select on ``score``; True when it improved on the best."""
        improved = self.best is None or better(score, self.best)
        self.history.append(record)
        self.epoch, self.step, self.totals = record["epoch"], 0, {}
        if improved:
            self.best, self.best_epoch = score, self.epoch
        return improved


@dataclass(frozen=True)
class _Checkpoints:
    """The ``last.pt``/``best.pt`` of a :func:`fit` run: what they hold, who writes, resuming.

    A checkpoint holds the :class:`_RunState` fields, the state dicts of the model (unwrapped
    from DDP), optimiser, scheduler, GradScaler and criterion (ALM multipliers, view
    generators), the config and the RNG states. Rank 0 writes (nothing when ``folder`` is
    ``None``); every rank waits for it.
    """

    folder: str | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    config: Mapping[str, Any] | None

    @property
    def bare(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return self.model.module if hasattr(self.model, "module") else self.model

    def save(self, name: str, state: _RunState) -> None:
        """Write ``folder/name`` (collective: every rank calls it)."""
        _average_over_ranks(state.totals)  # what rank 0 saves, every rank resumes from
        if self.folder is not None and dist_utils.rank() == 0:
            snapshot = {
                **{f.name: getattr(state, f.name) for f in fields(state)},
                "model": self.bare.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "criterion": self.criterion.state_dict(),
                "config": dict(self.config or {}),
                "rng": rng_state(),
            }
            save_checkpoint(Path(self.folder) / name, snapshot)
        dist_utils.barrier()

    def load(self) -> _RunState:
        """Restore every object and the RNG states from ``folder/last.pt``; return its state."""
        if self.folder is None:
            raise ValueError("resume=True needs a checkpoint_dir")
        ckpt = load_checkpoint(
            Path(self.folder) / "last.pt",
            required=("model", "optimizer", "criterion", "epoch", "rng"),
        )
        self.bare.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.criterion.load_state_dict(ckpt["criterion"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        state = _RunState(**{f.name: ckpt[f.name] for f in fields(_RunState) if f.name in ckpt})
        logger.info("resumed at epoch %d step %d", state.epoch, state.step)
        return state


def fit(
    model: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    val_loader: Iterable,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    metrics: Mapping[str, Any],
    select: str,
    select_mode: str = "max",
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    device: torch.device | str = "cpu",
    amp: str | None = None,
    clip_grad: float | None = None,
    infer: Callable | None = None,
    observe_view: Callable | None = None,
    output_transform: nn.Module | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    config: Mapping[str, Any] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    step_log: Callable[[int, int, torch.Tensor], None] | None = None,
    patience: int | None = None,
    callbacks: Iterable[Callback] = (),
) -> list[dict[str, Any]]:
    """Train for ``epochs`` epochs with validation, ALM steps, model selection and checkpoints.

    Every epoch: :func:`train_one_epoch`; :func:`evaluate` on ``val_loader`` where every ALM term
    of the criterion observes the validation logits; ``step()`` of those terms (one all-reduce
    each); the scheduler; ``last.pt`` (and ``best.pt`` when ``metrics[select]`` improved).
    ``last.pt`` is also written every ``checkpoint_every`` optimiser steps, so a killed run loses
    at most that many steps; with ``resume=True`` the run continues from ``last.pt`` exactly
    (bitwise on CPU).

    Args:
        model: the network (possibly DDP-wrapped).
        train_loader: a DataLoader whose ``sampler`` is an :class:`EpochSampler` and which has
            its own ``generator`` (so the global RNG only drives the model).
        val_loader: validation batches (or volumes, with ``infer``).
        criterion: loss module; its ALM terms are found by :func:`calibrant.alm.alm_terms`.
        optimizer: the optimiser.
        epochs: total number of epochs.
        metrics: validation metrics, name -> torchmetrics-style object.
        select: name of the metric that selects the best model.
        select_mode: ``"max"`` or ``"min"``.
        scheduler: stepped once per epoch.
        scaler: GradScaler for fp16.
        device: where batches go.
        amp: autocast mode.
        clip_grad: max gradient norm.
        infer: validation inference function (see :func:`evaluate`).
        observe_view: maps validation ``(logits, target)`` to what ALM terms observe (for
            example volume logits back to 2D slices).
        output_transform: fixed map applied to the logits before the validation metrics (for
            example the SPA inverse link); ALM terms observe the raw logits.
        checkpoint_dir: folder for ``last.pt``/``best.pt``; ``None`` disables checkpoints.
        checkpoint_every: also save ``last.pt`` every this many steps (0: only per epoch).
        resume: continue from ``checkpoint_dir/last.pt``.
        config: stored in the checkpoints.
        log: callback receiving one dict per epoch (before the ``on_epoch_end`` hooks).
        step_log: called as ``step_log(step, total, loss)`` after every optimiser step, with
            the step within the epoch (1-based), the epoch's number of steps and the running
            mean loss of the epoch as a 0-dim tensor (no host sync unless the callback reads
            it; a progress line reads it only when it prints).
        patience: early stopping: end training once ``metrics[select]`` has not improved for
            this many epochs (``None``: train all ``epochs``). Resumes exactly (the best epoch
            is in the checkpoint).
        callbacks: :class:`Callback` objects (progress bars, TensorBoard/CSV logging):
            ``on_train_step`` after every step (before that step's periodic checkpoint; a test
            simulates a crash with a callback that ends the process there), the ``on_eval_*``
            hooks of the validation pass (phase ``"val"``), ``on_epoch_end`` after ``log``.

    Returns:
        The per-epoch log dicts (including those before a resume): ``epoch``, ``train`` (the
        mean loss and its parts), ``val`` (the metrics), ``alm`` (each ALM term's step record),
        ``lr`` and ``seconds`` (the epoch's wall time in this process; an epoch resumed mid-way
        counts its resumed part).
    """
    better = _comparison(select_mode)
    _check_train_loader(train_loader)
    checkpoints = _Checkpoints(
        checkpoint_dir, model, optimizer, criterion, scheduler, scaler, config
    )
    state = checkpoints.load() if resume else _RunState()
    alms = alm_terms(criterion)
    observers = [_ViewObserver(a, observe_view) for a in alms] if observe_view else alms
    callbacks = _with_functions(callbacks, log, step_log)
    for epoch in range(state.epoch, epochs):
        started = time.perf_counter()
        total = _start_epoch(train_loader, epoch, state.step)
        train_logs = train_one_epoch(
            model,
            train_loader,
            criterion,
            optimizer,
            device=device,
            amp=amp,
            scaler=scaler,
            clip_grad=clip_grad,
            start_step=state.step,
            totals=state.totals,
            on_step=_step_hook(state, checkpoints, callbacks, total, checkpoint_every),
        )
        val = evaluate(
            model,
            val_loader,
            metrics,
            device=device,
            amp=amp,
            observers=observers,
            infer=infer,
            calibrator=output_transform,
            callbacks=callbacks,
            phase="val",
        )
        alm_logs = _step_alm_terms(alms)
        if scheduler is not None:
            scheduler.step()
        record = {
            "epoch": epoch + 1,
            "train": train_logs,
            "val": _to_python(val),
            "alm": alm_logs,
            "lr": [g["lr"] for g in optimizer.param_groups],
            "seconds": round(time.perf_counter() - started, 3),  # this process's part of it
        }
        if state.end_epoch(record, float(val[select]), better):
            checkpoints.save("best.pt", state)
        checkpoints.save("last.pt", state)
        for cb in callbacks:
            cb.on_epoch_end(record)
        if patience is not None and state.epoch - state.best_epoch >= patience:
            logger.info(
                "early stop after epoch %d: %s has not improved for %d epochs (best epoch %d)",
                state.epoch,
                select,
                patience,
                state.best_epoch,
            )
            break
    return state.history


def _comparison(select_mode: str) -> Callable[[float, float], bool]:
    """``better(score, best)`` for ``select_mode`` ``"max"`` or ``"min"``."""
    if select_mode not in ("max", "min"):
        raise ValueError(f"select_mode must be 'max' or 'min', got {select_mode!r}")
    return operator.gt if select_mode == "max" else operator.lt


def _check_train_loader(loader: torch.utils.data.DataLoader) -> None:
    """Raise unless ``loader`` draws from an :class:`EpochSampler` that gives every rank a step."""
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, EpochSampler):
        raise ValueError("fit needs a train_loader whose sampler is a calibrant EpochSampler")
    if sampler.world_size > 1 and not sampler.pad:
        _check_equal_steps(sampler, loader.batch_size or 1)


class _Functions(Callback):
    """:func:`fit`'s ``log`` and ``step_log`` functions as a :class:`Callback`."""

    def __init__(self, log: Callable | None, step_log: Callable | None) -> None:
        self.log, self.step_log = log, step_log

    def on_train_step(self, step: int, total: int, loss: torch.Tensor) -> None:
        """Call ``step_log``."""
        if self.step_log is not None:
            self.step_log(step, total, loss)

    def on_epoch_end(self, record: Mapping[str, Any]) -> None:
        """Call ``log``."""
        if self.log is not None:
            self.log(record)


def _with_functions(
    callbacks: Iterable[Callback], log: Callable | None, step_log: Callable | None
) -> list[Callback]:
    """``callbacks``, preceded by ``log``/``step_log`` as a callback when either is given."""
    functions = [_Functions(log, step_log)] if log is not None or step_log is not None else []
    return [*functions, *callbacks]


def _start_epoch(loader: torch.utils.data.DataLoader, epoch: int, step: int) -> int:
    """Point the sampler (and a dataset with ``set_epoch``) at ``epoch``, past ``step`` steps.

    Returns:
        The epoch's number of steps, those already done included.
    """
    loader.sampler.set_epoch(epoch, start=step * (loader.batch_size or 1))
    total = step + len(loader)
    set_epoch = getattr(loader.dataset, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)
    return total


def _step_hook(
    state: _RunState,
    checkpoints: _Checkpoints,
    callbacks: list[Callback],
    total: int,
    every: int,
) -> Callable[[int, dict[str, Any]], None]:
    """The ``on_step`` of one epoch's :func:`train_one_epoch`.

    After each step it records the step and the running sums in ``state``, calls the
    ``on_train_step`` hooks and writes ``last.pt`` every ``every`` global steps.
    """

    def on_step(step: int, totals: dict[str, Any]) -> None:
        state.step, state.totals, state.global_step = step, totals, state.global_step + 1
        if callbacks:
            running = totals["loss"] / totals["steps"]
            for cb in callbacks:
                cb.on_train_step(step, total, running)
        if every and state.global_step % every == 0:
            checkpoints.save("last.pt", state)

    return on_step


def _step_alm_terms(alms: list[nn.Module]) -> dict[str, Any]:
    """``step()`` every ALM term after the validation pass; their records as ``alm{i}``."""
    logs = {}
    for i, term in enumerate(alms):
        record = term.step()
        if isinstance(record, Mapping):
            logs[f"alm{i}"] = _to_python(dict(record))
    return logs


class _ViewObserver:
    def __init__(self, term: nn.Module, view: Callable) -> None:
        self.term, self.view = term, view

    def observe(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.term.observe(*self.view(logits, target))


def _to_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Mapping):
        return {k: _to_python(v) for k, v in value.items()}
    return value
