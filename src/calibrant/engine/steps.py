"""One training epoch: the sampler, the callback protocol, autocast and the per-step work."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from calibrant import distributed as dist_utils
from calibrant._tensor import Forward

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
        self, forward: Forward, inputs: torch.Tensor, target: torch.Tensor
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
