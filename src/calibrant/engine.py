"""The training and evaluation loop as plain functions.

``fit`` is one loop over epochs that reads top to bottom: point the sampler at the epoch,
``train_one_epoch`` (autocast forward, float32 criterion, backward, clip, step), ``evaluate`` on
the validation loader (metrics update, and every ALM term ``observe``-s the validation logits),
``step()`` of every ALM term, the scheduler, then model selection and the checkpoints. What a run
is made of (model, optimiser, scheduler, scaler, criterion, config: ``_Checkpoints`` saves and
restores them) is kept apart from where it stands (``_RunState``: epoch, step, running sums, best
score, history), which every checkpoint stores. Methods never touch this file: a calibration
method is a criterion (usually a :class:`~calibrant.losses.combine.WeightedSum`) whose terms may
hold multipliers.

Resuming is exact: the data order of every epoch is a function of ``(seed, epoch)``
(:class:`EpochSampler`), a checkpoint records the step within the epoch, the running sums and the
RNG states, and the resumed run skips the batches it already saw.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from calibrant.engine import EpochSampler, train_one_epoch
    >>> data = torch.utils.data.TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,)))
    >>> sampler = EpochSampler(len(data), seed=0)
    >>> loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler)
    >>> model = nn.Linear(3, 2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> logs = train_one_epoch(model, loader, nn.CrossEntropyLoss(), opt)
    >>> sorted(logs)
    ['loss', 'steps']
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from calibrant import distributed as dist_utils
from calibrant.alm.term import alm_terms
from calibrant.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

__all__ = [
    "Callback",
    "EpochSampler",
    "TrainStep",
    "autocast_context",
    "evaluate",
    "fit",
    "loss_terms",
    "predict_volume",
    "sliding_window",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Deterministic, resumable, rank-sharded sampler.

    The order of epoch ``e`` is a permutation drawn from a generator seeded with ``seed + e``.
    With ``world_size > 1`` the order is padded (``pad=True``, as
    :class:`~torch.utils.data.DistributedSampler`, repeating its first indices) or left uneven
    (``pad=False``: calibrant's training and evaluation, so that no sample counts twice) and
    rank ``r`` takes every ``world_size``-th index from ``r``. Then the ranks' batches ``k``
    together hold exactly the 1-process batch ``k`` of ``world_size`` times their size.

    Args:
        n: dataset length.
        seed: base seed.
        shuffle: permute (training) or keep order (evaluation).
        rank: this process's rank.
        world_size: number of processes.
        pad: repeat the first indices so every rank gets the same count.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
        if n <= 0:
            raise ValueError(f"EpochSampler needs a non-empty dataset, got length {n}")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and the number of this rank's leading samples to skip."""
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1 and self.pad:
            total = math.ceil(self.n / self.world_size) * self.world_size
            order += order[: total - self.n]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self._order()[self.start :])

    def __len__(self) -> int:
        return len(self._order()) - self.start


class Callback:
    """Hooks that :func:`fit` and :func:`evaluate` call; override any subset (defaults do nothing).

    Progress bars (:class:`calibrant.progress.Progress`) and the TensorBoard/CSV logger
    (:class:`calibrant.runlog.RunLogger`) are callbacks; the command line passes them to
    :func:`calibrant.experiment.train_run`, so the loop itself never prints or writes logs.
    Under DDP every rank gets the same callbacks (a hook may hold a metric whose ``compute``
    is collective); only rank 0 should print or write.

    ``phase`` is ``"val"`` (validation inside :func:`fit`), ``"test"`` or any name the caller
    of :func:`evaluate` gives.
    """

    def setup(self, experiment: Any) -> None:
        """Called by :func:`calibrant.experiment.train_run` once the run is built."""

    def on_train_step(self, step: int, total: int, loss: torch.Tensor) -> None:
        """After every optimiser step.

        Gets the step within the epoch (1-based), the epoch's number of steps and the epoch's
        running mean loss as a 0-dim tensor (reading it syncs the accelerator: read it only
        when needed).
        """

    def on_eval_start(self, phase: str, total: int | None) -> None:
        """Before the first batch of an evaluation pass (``total``: its batches, if known)."""

    def on_eval_batch(self, phase: str, logits: torch.Tensor, target: torch.Tensor) -> None:
        """After each evaluation batch, with the logits the metrics saw and the target.

        The logits are those after any calibrator or output transform.
        """

    def on_eval_end(self, phase: str, results: Mapping[str, Any]) -> None:
        """After an evaluation pass, with its computed metrics."""

    def on_epoch_end(self, record: Mapping[str, Any]) -> None:
        """After each epoch of :func:`fit` (validation, ALM steps and checkpoints done).

        ``record`` is the epoch's log record (``epoch``, ``train``, ``val``, ``alm``, ``lr``).
        """


def _len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


@runtime_checkable
class TrainStep(Protocol):
    """A criterion that runs its own forward pass(es) in training (e.g. two views for BWCR).

    ``train_step(forward, inputs, target)`` gets ``forward(images) -> logits`` (the model under
    the engine's autocast) and returns the named loss terms; their sum is the loss. Validation
    and evaluation stay single-view: they call ``criterion(logits, target)`` or nothing at all.
    Any random state the step uses belongs in the criterion's ``state_dict`` so that resuming is
    exact.
    """

    def train_step(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        inputs: torch.Tensor,
        target: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Named loss terms of one training step."""
        ...


def autocast_context(
    device: torch.device | str, amp: str | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in {None, "none", "bf16", "fp16"}; a null context for none."""
    if amp in (None, "none"):
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"amp must be one of none, bf16, fp16; got {amp!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=dtypes[amp])


def loss_terms(criterion: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> dict:
    """Named loss terms: ``criterion.terms`` when it composes several, else ``{"loss": value}``."""
    terms = getattr(criterion, "terms", None)
    if callable(terms):
        return terms(logits, target)
    return {"loss": criterion(logits, target)}


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device | str = "cpu",
    amp: str | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad: float | None = None,
    start_step: int = 0,
    totals: dict[str, float] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``: forward under autocast, criterion in float32, backward, step.

    Args:
        model: the network; put in train mode here.
        loader: yields ``(inputs, target)``.
        criterion: loss module; if it has ``terms(logits, target) -> dict`` every term is logged.
            If it has ``train_step(forward, inputs, target) -> dict`` (the :class:`TrainStep`
            hook, e.g. the two-view BWCR objective) that runs the step's forward pass(es)
            through ``forward`` (the autocast model call) and returns the named terms.
        optimizer: the optimiser.
        device: where batches go.
        amp: ``None``/``"none"``, ``"bf16"`` or ``"fp16"`` (use a ``scaler`` with fp16).
        scaler: ``torch.amp.GradScaler`` for fp16.
        clip_grad: max global gradient norm, or ``None``.
        start_step: index of the first step (when resuming mid-epoch; the loader already skips).
        totals: running sums of the terms carried over from before a resume.
        on_step: called as ``on_step(step, totals)`` after each optimiser step (checkpointing).

    Under DDP the terms of the epoch's last batch, which may be short and split unevenly,
    are weighted by the rank's share of the global batch (one all-reduce per epoch), so the
    averaged gradient is the global batch mean.

    Returns:
        Mean of each term over the epoch's steps, plus ``steps``; under DDP the mean over all
        ranks' steps (the global mean, identical on every rank).
    """
    model.train()
    device = torch.device(device)
    totals = dict(totals or {})
    step = start_step
    train_step = getattr(criterion, "train_step", None)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(device, amp):
            return model(x)

    last = start_step + len(loader) - 1 if dist_utils.is_distributed() else -1
    for step, (inputs, target) in enumerate(loader, start=start_step):
        inputs, target = _to(inputs, device), _to(target, device)
        if callable(train_step):  # the criterion runs the forward pass(es) itself
            terms = train_step(forward, inputs, target)
        else:
            terms = loss_terms(criterion, forward(inputs), target)
        if step == last:  # the epoch's last batch may be short, and uneven over the ranks
            terms = _weight_by_share(terms, len(target), device)
        loss = sum(terms.values())
        if device.type == "cpu" or on_step is not None:  # no extra host sync on accelerators
            _check_finite_loss(loss, terms, step)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_grad is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        for name, value in {"loss": loss, **terms}.items():
            totals[name] = totals.get(name, 0.0) + value.detach().double()
        totals["steps"] = totals.get("steps", 0) + 1
        if on_step is not None:
            on_step(step + 1, totals)
    _average_over_ranks(totals)  # the global mean: every rank ran the same number of steps
    n = max(totals.get("steps", 0), 1)
    means = {k: (float(v) / n if k != "steps" else v) for k, v in totals.items()}
    if not math.isfinite(means.get("loss", 0.0)):
        raise FloatingPointError(f"non-finite mean loss over the epoch: {means}")
    return means


def _average_over_ranks(totals: dict[str, Any]) -> None:
    """Replace each running sum of ``totals`` by its mean over ranks, in place (collective).

    The sum over ranks is unchanged, so this may run at any step (:func:`fit` runs it before
    each checkpoint, which rank 0 alone writes) and again at the end of the epoch.
    """
    names = [k for k in totals if k != "steps"]
    if not names or not dist_utils.is_distributed():
        return
    sums = torch.stack([torch.as_tensor(totals[k], dtype=torch.float64) for k in names])
    dist_utils.all_reduce_sum(sums).div_(dist_utils.world_size())
    totals.update(zip(names, sums.unbind(), strict=True))


def _weight_by_share(
    terms: dict[str, torch.Tensor], n: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Scale a rank's batch-mean terms by ``n · world_size / N`` (``N``: the global batch).

    DDP averages the ranks' gradients with equal weights, which is the global batch mean only
    when every rank holds ``N / world_size`` samples. With unequal shares (the last batch of
    an unpadded epoch) the weights make it the mean over the ``N`` samples, as one process
    computes it. One all-reduce; the terms are returned unchanged when the shares are equal.
    """
    total = dist_utils.all_reduce_sum(torch.tensor([float(n)], device=device))
    scale = n * dist_utils.world_size() / float(total)
    return terms if scale == 1.0 else {k: v * scale for k, v in terms.items()}


def _check_equal_steps(sampler: EpochSampler, batch_size: int) -> None:
    """Raise unless every rank gets the same number of batches (DDP would hang otherwise)."""
    steps = {
        math.ceil(len(range(r, sampler.n, sampler.world_size)) / batch_size)
        for r in range(sampler.world_size)
    }
    if len(steps) > 1:
        last = sampler.n % (batch_size * sampler.world_size)
        raise ValueError(
            f"the last global batch of an epoch holds {last} sample(s), fewer than the "
            f"{sampler.world_size} ranks, so some rank would get no batch: {sampler.n} training "
            f"samples, {batch_size} per rank; change train.batch_size"
        )


def _check_finite_loss(loss: torch.Tensor, terms: dict, step: int) -> None:
    if not bool(torch.isfinite(loss)):
        raise FloatingPointError(
            f"non-finite loss at step {step}: "
            + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        )


@torch.no_grad()
def sliding_window(
    model: nn.Module,
    volume: torch.Tensor,
    window: tuple[int, ...],
    *,
    overlap: float = 0.5,
    batch_size: int = 4,
) -> torch.Tensor:
    """Sliding-window inference of a 3D model over ``(1, in_ch, *spatial)``, averaging overlaps.

    The volume is padded (replicate) to at least the window, windows are placed on a regular grid
    with the given overlap (the last one flush with the end), and logits are averaged.
    """
    spatial = volume.shape[2:]
    pads = [max(w - s, 0) for w, s in zip(window, spatial, strict=True)]
    padded = nn.functional.pad(
        volume, [p for d in reversed(pads) for p in (0, d)], mode="replicate"
    )
    shape = padded.shape[2:]
    starts = []
    for w, s in zip(window, shape, strict=True):
        stride = max(int(w * (1 - overlap)), 1)
        pos = list(range(0, s - w + 1, stride))
        if pos[-1] != s - w:
            pos.append(s - w)
        starts.append(pos)
    grid = torch.cartesian_prod(*[torch.tensor(p) for p in starts]).view(-1, len(window)).tolist()
    out = weight = None
    for i in range(0, len(grid), batch_size):
        corners = grid[i : i + batch_size]
        crops = torch.cat(
            [
                padded[(..., *[slice(c, c + w) for c, w in zip(corner, window, strict=True)])]
                for corner in corners
            ]
        )
        logits = model(crops).float()
        if out is None:
            out = logits.new_zeros((1, logits.shape[1], *shape))
            weight = logits.new_zeros((1, 1, *shape))
        for j, corner in enumerate(corners):
            region = (..., *[slice(c, c + w) for c, w in zip(corner, window, strict=True)])
            out[region] += logits[j : j + 1]
            weight[region] += 1
    out = out / weight
    return out[(..., *[slice(0, s) for s in spatial])]


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    volume: torch.Tensor,
    *,
    model_dims: int,
    batch_size: int = 16,
    window: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Logits ``(1, C, *spatial)`` of a volume ``(1, in_ch, *spatial)``.

    A 2D model (``model_dims=2``) predicts slice by slice along the first spatial axis and the
    slices are stacked back into the volume; a 3D model runs whole (or with ``sliding_window``
    when ``window`` is given).
    """
    if model_dims == 3:
        if window is None:
            return model(volume).float()
        return sliding_window(model, volume, window, batch_size=batch_size)
    if model_dims != 2 or volume.dim() != 5:
        raise ValueError(
            f"predict_volume needs a (1, in_ch, S, H, W) volume and model_dims 2 or 3, got "
            f"shape {tuple(volume.shape)} and model_dims={model_dims}"
        )
    slices = volume[0].movedim(1, 0)  # (S, in_ch, H, W)
    parts = [model(slices[i : i + batch_size]).float() for i in range(0, len(slices), batch_size)]
    return torch.cat(parts).movedim(0, 1).unsqueeze(0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    metrics: Mapping[str, Any],
    *,
    device: torch.device | str = "cpu",
    amp: str | None = None,
    observers: Iterable[nn.Module] = (),
    infer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    calibrator: nn.Module | None = None,
    callbacks: Iterable[Callback] = (),
    phase: str = "val",
) -> dict[str, Any]:
    """Update every metric (and every ALM observer) on each batch, then compute.

    Args:
        model: the network; put in eval mode here.
        loader: yields ``(inputs, target)``; one item is one volume in volume mode.
        metrics: name -> torchmetrics-style object with ``reset``/``update(logits, target)``/
            ``compute``; their own DDP sync makes the result global.
        device: where batches go.
        amp: autocast mode for the forward pass.
        observers: modules with ``observe(logits, target)`` (ALM multipliers).
        infer: ``infer(model, inputs) -> logits``; default ``model(inputs)``
            (use :func:`predict_volume` for slice-wise volume evaluation).
        calibrator: optional post-hoc module applied to the logits before the metrics.
        callbacks: :class:`Callback` objects (progress, logging); their ``on_eval_*`` hooks get
            ``phase``.
        phase: name of the pass given to the callbacks (``"val"``, ``"test"``...).

    Returns:
        name -> computed value (tensors as returned by the metrics).
    """
    model.eval()
    device = torch.device(device)
    observers = list(observers)
    callbacks = list(callbacks)
    for metric in metrics.values():
        metric.reset()
    for cb in callbacks:
        cb.on_eval_start(phase, _len(loader))
    for inputs, target in loader:
        inputs, target = _to(inputs, device), _to(target, device)
        with autocast_context(device, amp):
            logits = infer(model, inputs) if infer is not None else model(inputs)
        logits = logits.float()
        for obs in observers:
            obs.observe(logits, target)
        if calibrator is not None:
            logits = calibrator(logits)
        for metric in metrics.values():
            metric.update(logits, target)
        for cb in callbacks:
            cb.on_eval_batch(phase, logits, target)
    results = {name: metric.compute() for name, metric in metrics.items()}
    for cb in callbacks:
        cb.on_eval_end(phase, results)
    dist_utils.barrier()
    return results


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
        The per-epoch log dicts (including those before a resume).
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
        }
        _end_epoch(state, checkpoints, record, float(val[select]), better)
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


def _end_epoch(
    state: _RunState,
    checkpoints: _Checkpoints,
    record: dict[str, Any],
    score: float,
    better: Callable[[float, float], bool],
) -> None:
    """Add the epoch's record and select on ``score``: ``best.pt`` if it improved, ``last.pt``."""
    improved = state.best is None or better(score, state.best)
    state.history.append(record)
    state.epoch, state.step, state.totals = record["epoch"], 0, {}
    if improved:
        state.best, state.best_epoch = score, state.epoch
        checkpoints.save("best.pt", state)
    checkpoints.save("last.pt", state)


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
