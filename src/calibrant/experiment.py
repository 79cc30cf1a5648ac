"""Build every object of a run from a config: data, model, criterion, optimiser, metrics.

Why this file is long: it is the one map from config sections to registry entries, and train_run.

This is the only place that maps config sections to registry entries. It takes explicit values
(data root, device, seed, rank) from the CLI and never reads the environment itself.

A config has the sections ``data``, ``model``, ``loss``, ``optim``, ``sched``, ``train`` and
``eval`` (see ``calibrant/configs/*.yaml``). ``loss.name`` is looked up in
:data:`~calibrant.registry.LOSSES` (the ALM objectives included).

Example:
    >>> from calibrant.experiment import build_optimizer
    >>> import torch
    >>> opt = build_optimizer({"name": "adam", "lr": 1e-3}, torch.nn.Linear(2, 2).parameters())
    >>> type(opt).__name__
    'Adam'
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import lr_scheduler

from calibrant import report, run_folder
from calibrant.distributed import sync_batchnorm
from calibrant.engine import EpochSampler, fit, predict_volume
from calibrant.models import to_channels_last
from calibrant.registry import CALIBRATORS, DATASETS, LOSSES, METRICS, MODELS
from calibrant.views import two_view_objective

__all__ = [
    "Experiment",
    "build_criterion",
    "build_data",
    "build_experiment",
    "build_metrics",
    "build_model",
    "build_optimizer",
    "build_output_transform",
    "build_scheduler",
    "seed_everything",
    "train_run",
]

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def _kwargs(section: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    section = dict(section or {})
    if "name" not in section:
        raise ValueError(f"config section {section} needs a 'name'")
    return section.pop("name"), section


def build_optimizer(
    cfg: Mapping[str, Any], params: Iterable[nn.Parameter]
) -> torch.optim.Optimizer:
    """``adam`` | ``adamw`` | ``sgd`` with the section's keyword arguments."""
    name, kw = _kwargs(cfg)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return _call("optimizer", name, OPTIMIZERS[name], params, **kw)


SCHEDULERS = {  # per-epoch schedulers of the papers; keyword arguments as in torch
    "step": lambda opt, epochs, **kw: lr_scheduler.StepLR(
        opt, **{"step_size": 50, "gamma": 0.1, **kw}
    ),
    "multistep": lambda opt, epochs, **kw: lr_scheduler.MultiStepLR(opt, **{"gamma": 0.1, **kw}),
    "cosine": lambda opt, epochs, **kw: lr_scheduler.CosineAnnealingLR(
        opt, **{"T_max": epochs, **kw}
    ),
}


def _call(kind: str, name: str, factory, *args, **kw):
    try:
        return factory(*args, **kw)
    except TypeError as e:  # a misspelt or missing keyword in the config
        raise ValueError(f"{kind} {name!r} with arguments {kw}: {e}") from e


def build_scheduler(cfg: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer, epochs: int):
    """``step`` (StepLR), ``multistep``, ``cosine`` (T_max = epochs) or ``none``; per epoch."""
    if not cfg or cfg.get("name", "none") == "none":
        return None
    name, kw = _kwargs(cfg)
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}, none")
    return _call("scheduler", name, SCHEDULERS[name], optimizer, epochs, **kw)


def build_criterion(cfg: Mapping[str, Any], info: Any, *, seed: int = 0) -> nn.Module:
    """The registered loss ``cfg["name"]`` (:data:`~calibrant.registry.LOSSES`) for ``info``.

    The dataset supplies ``num_classes`` and ``ignore_index`` where the loss takes them (the ALM
    objectives need the class count). A loss registered with ``inputs="two_view"`` (BWCR's
    consistency) is wrapped in :func:`calibrant.views.two_view_objective`, whose ``train_step``
    draws the views (seeded by ``seed``).

    Raises:
        KeyError: for an unknown loss, with the close matches.
    """
    name, kw = _kwargs(cfg)
    entry = LOSSES.get(name)
    if entry.meta.get("inputs") == "two_view":
        kw.setdefault("seed", seed)
        if info.task != "multilabel":
            kw.setdefault("ignore_index", info.ignore_index)
        return two_view_objective(entry.factory, **kw)
    params = inspect.signature(entry.factory).parameters
    if "num_classes" in params:
        kw.setdefault("num_classes", info.num_classes)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if info.task != "multilabel" and (takes_any or "ignore_index" in params):
        kw.setdefault("ignore_index", info.ignore_index)
    return entry.factory(**kw)


def build_model(cfg: Mapping[str, Any], info: Any) -> nn.Module:
    """A registered model with the dataset's input channels and number of classes."""
    name, kw = _kwargs(cfg)
    kw.setdefault("in_channels", info.in_channels)
    kw.setdefault("num_classes", info.num_classes)
    return MODELS.build(name, **kw)


class _Pick:
    """One entry of a dict-valued metric, so that it can select the model (``pick: jaccard``)."""

    def __init__(self, metric: Any, name: str, key: str) -> None:
        self.metric, self.name, self.key = metric, name, key

    def reset(self) -> None:
        self.metric.reset()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.metric.update(*args, **kwargs)

    def compute(self) -> Any:
        values = self.metric.compute()
        if not isinstance(values, Mapping) or self.key not in values:
            entries = ", ".join(values) if isinstance(values, Mapping) else "none (not a dict)"
            raise KeyError(f"metric {self.name!r} has no entry {self.key!r}; entries: {entries}")
        return values[self.key]

    def to(self, device: Any) -> _Pick:
        self.metric.to(device)
        return self


def build_metrics(specs: Iterable[Mapping[str, Any]], info: Any) -> dict[str, Any]:
    """Metrics from ``{name, as?, pick?, **kwargs}`` specs, with ``num_classes``/``ignore_index``.

    ``pick: key`` keeps one entry of a metric that computes a dict (``{name: binary_scores,
    as: jaccard, pick: jaccard}``), for example to select the model on it.
    """
    metrics = {}
    for spec in specs:
        spec = dict(spec)
        label = spec.pop("as", None)
        pick = spec.pop("pick", None)
        name, kw = _kwargs(spec)
        factory = METRICS.get(name).factory
        params = inspect.signature(factory).parameters
        if "num_classes" in params:
            kw.setdefault("num_classes", info.num_classes)
        if "ignore_index" in params and info.task != "multilabel":
            kw.setdefault("ignore_index", info.ignore_index)
        metric = factory(**kw)
        metrics[label or name] = metric if pick is None else _Pick(metric, name, str(pick))
    return metrics


def build_output_transform(loss_cfg: Mapping[str, Any]) -> nn.Module | None:
    """The prediction-time map a loss implies, or None.

    A loss whose registration names a ``link`` (SPA: ``"spa_link"``, its inverse link) is read
    through that calibrator, built from the loss's own keyword arguments.
    """
    name, kw = _kwargs(loss_cfg)
    link = LOSSES.meta(name).get("link") if name in LOSSES else None
    if link is None:
        return None
    return CALIBRATORS.get(link).factory.from_loss_kwargs(**kw)


def build_data(cfg: Mapping[str, Any], root: Any, split: str) -> Any:
    """``DATASETS.build(name, root=root, split=split, **kwargs)`` with split-specific overrides.

    A key ``<split>`` in the data section (``train: {view: slices}``) holds options for that
    split only.
    """
    cfg = dict(cfg)
    per_split = {s: cfg.pop(s, {}) or {} for s in ("train", "val", "test")}
    name, kw = _kwargs(cfg)
    return DATASETS.build(name, root=root, split=split, **{**kw, **per_split[split]})


def _volume_collate(item):
    # (S, in_ch, H, W) slices; label (S, H, W) -> (1, S, H, W), or a binary (S, 1, H, W) ->
    # (1, 1, S, H, W), matching the (1, C, S, H, W) volume logits
    image, label = item
    if label.dim() == image.dim():
        return image, label.movedim(0, 1).unsqueeze(0)
    return image, label.unsqueeze(0)


def _slices_to_volume(batch_size: int) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    def infer(model: nn.Module, slices: torch.Tensor) -> torch.Tensor:
        # (S, in_ch, H, W) slices of one volume -> (1, C, S, H, W) logits
        return predict_volume(
            model, slices.movedim(0, 1).unsqueeze(0), model_dims=2, batch_size=batch_size
        )

    return infer


def _volume_to_slices(logits: torch.Tensor, target: torch.Tensor):
    if target.dim() == logits.dim():  # binary (1, 1, S, H, W) target
        return logits[0].movedim(1, 0), target[0].movedim(1, 0)
    return logits[0].movedim(1, 0), target[0]


@dataclass
class Experiment:
    """Everything ``engine.fit`` needs, built from one config."""

    cfg: dict[str, Any]
    info: Any
    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader
    metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    infer: Callable | None = None
    observe_view: Callable | None = None
    output_transform: nn.Module | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _loader(ds, *, batch_size, sampler, seed, workers, collate_fn=None):
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate_fn,
        persistent_workers=False,
    )


def build_experiment(
    cfg: Mapping[str, Any],
    *,
    data_root: Any = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> Experiment:
    """Build data loaders, model, criterion, optimiser, scheduler and metrics of a run."""
    cfg = dict(cfg)
    train_cfg = dict(cfg.get("train", {}))
    seed = int(train_cfg.get("seed", 0))
    workers = int(train_cfg.get("workers", 0))
    batch_size = int(train_cfg.get("batch_size", 8))
    epochs = int(train_cfg.get("epochs", 1))
    channels_last = train_cfg.get("channels_last", False)  # weights NHWC/NDHWC (to_channels_last)
    if not isinstance(channels_last, bool):
        raise ValueError(f"train.channels_last must be true or false, got {channels_last!r}")
    sync_bn = train_cfg.get("sync_batchnorm", True)  # BatchNorm over the global batch (DDP)
    if not isinstance(sync_bn, bool):
        raise ValueError(f"train.sync_batchnorm must be true or false, got {sync_bn!r}")

    train_ds = build_data(cfg["data"], data_root, "train")
    val_ds = build_data(cfg["data"], data_root, "val")
    test_ds = build_data(cfg["data"], data_root, "test")
    info = train_ds.info

    torch.manual_seed(seed)  # model initialisation is part of the seeded run
    model = build_model(cfg["model"], info).to(device)
    if channels_last:
        to_channels_last(model)
    if world_size > 1 and sync_bn:
        model = sync_batchnorm(model)
    criterion = build_criterion(cfg["loss"], info, seed=seed + rank).to(device)
    optimizer = build_optimizer(cfg.get("optim", {"name": "adam", "lr": 1e-3}), model.parameters())
    scheduler = build_scheduler(cfg.get("sched"), optimizer, epochs)

    # not padded: under DDP the global batches hold exactly the 1-process batches (the last,
    # short one is weighted by each rank's share in train_one_epoch)
    train_sampler = EpochSampler(
        len(train_ds), seed=seed, rank=rank, world_size=world_size, pad=False
    )
    train_loader = _loader(
        train_ds, batch_size=batch_size, sampler=train_sampler, seed=seed, workers=workers
    )

    def eval_loader(ds):
        sampler = EpochSampler(len(ds), shuffle=False, rank=rank, world_size=world_size, pad=False)
        if getattr(ds, "slice_stacks", False):  # whole volumes of 2D slices, one per batch
            return _loader(
                ds,
                batch_size=None,
                sampler=sampler,
                seed=seed,
                workers=workers,
                collate_fn=_volume_collate,
            )
        return _loader(
            ds,
            batch_size=int(cfg.get("eval", {}).get("batch_size", batch_size)),
            sampler=sampler,
            seed=seed,
            workers=workers,
        )

    infer = observe_view = None
    if info.spatial_dims == 2:  # multi-class or binary ("foreground") segmentation
        infer = _slices_to_volume(int(cfg.get("eval", {}).get("batch_size", 16)))
        observe_view = _volume_to_slices
    elif info.spatial_dims == 3:
        window = cfg.get("eval", {}).get("window")
        if window is not None:
            window = tuple(window)

            def infer(model, volume):
                return predict_volume(model, volume, model_dims=3, window=window)

    output_transform = build_output_transform(cfg["loss"])
    if output_transform is not None:
        output_transform = output_transform.to(device)
    eval_cfg = cfg.get("eval", {})
    metrics = build_metrics(eval_cfg.get("val_metrics", []), info)
    test_metrics = build_metrics(eval_cfg.get("test_metrics", []), info)
    for m in (*metrics.values(), *test_metrics.values()):
        if hasattr(m, "to"):
            m.to(device)
    return Experiment(
        cfg=cfg,
        info=info,
        model=model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        val_loader=eval_loader(val_ds),
        test_loader=eval_loader(test_ds),
        metrics=metrics,
        test_metrics=test_metrics,
        infer=infer,
        observe_view=observe_view,
        output_transform=output_transform,
    )


def tested_checkpoint(cfg: Mapping[str, Any]) -> str:
    """Which checkpoint a run tests after training (``eval.checkpoint``).

    ``"best"`` (default) is selected on ``eval.select``; ``"last"`` is the converged network,
    as the papers test it.

    Example:
        >>> tested_checkpoint({"eval": {"checkpoint": "last"}})
        'last'
    """
    name = cfg.get("eval", {}).get("checkpoint", "best")
    if name not in ("best", "last"):
        raise ValueError(f"eval.checkpoint must be 'best' or 'last', got {name!r}")
    return name


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy's legacy global state and torch with ``seed + rank``."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)  # noqa: NPY002 (seeds the legacy global state used by peers)
    torch.manual_seed(seed + rank)


def train_run(
    cfg: Mapping[str, Any],
    out: str | Path,
    *,
    data_root: Any = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[dict[str, Any]], None] | None = None,
    step_log: Callable[[int, int, torch.Tensor], None] | None = None,
    callbacks: Iterable[Any] = (),
) -> tuple[Experiment, list[dict[str, Any]], dict[str, Any]]:
    """Train one run into the folder ``out``, test its best checkpoint and write its report.

    The folder is checked before anything is written (:mod:`calibrant.run_folder`): one that
    already holds a run is refused unless ``resume=True`` (the config must equal the stored
    one) or ``overwrite=True`` (the old run's files are deleted, once the experiment is
    built). ``config.json`` is written only after the experiment (data, model, criterion) was
    built, and a start that fails before its first checkpoint removes what it created.

    Seeds everything from ``cfg["train"]["seed"]``, builds the :class:`Experiment`, wraps the
    model in DDP when ``world_size > 1`` (the process group must be initialised), runs
    :func:`calibrant.engine.fit` with checkpoints in ``out/checkpoints`` (``resume=True``
    continues from ``last.pt``; ``log``/``step_log`` are fit's per-epoch and per-step callbacks),
    evaluates ``best.pt`` (``last.pt`` with ``eval.checkpoint: last``) on the test split and, on
    rank 0, writes ``config.json``, ``metrics.json``, ``report.md`` and the figures.
    ``callbacks`` are
    :class:`calibrant.engine.Callback` objects (progress bars, the TensorBoard/CSV logger): their
    ``setup(experiment)`` is called once the run is built, then they see the training (``fit``)
    and the test evaluation (phase ``"test"``).

    Returns:
        ``(experiment, history, results)``; ``results["test"]`` holds the flat test metrics.

    Raises:
        calibrant.run_folder.RunFolderError: the folder holds a run (see above).
    """
    tested_checkpoint(cfg)  # a bad value fails before anything is written or trained
    start = run_folder.prepare(out, dict(cfg), resume=resume, overwrite=overwrite)
    try:
        return _train_run(
            cfg,
            start,
            data_root=data_root,
            device=device,
            rank=rank,
            world_size=world_size,
            resume=resume,
            log=log,
            step_log=step_log,
            callbacks=callbacks,
        )
    except BaseException:
        run_folder.abandon(start, rank=rank)
        raise


def _train_run(
    cfg: Mapping[str, Any],
    start: Any,
    *,
    data_root: Any,
    device: torch.device | str,
    rank: int,
    world_size: int,
    resume: bool,
    log: Callable[[dict[str, Any]], None] | None,
    step_log: Callable[[int, int, torch.Tensor], None] | None,
    callbacks: Iterable[Any],
) -> tuple[Experiment, list[dict[str, Any]], dict[str, Any]]:
    """:func:`train_run` once the folder ``start.out`` was checked."""
    device = torch.device(device)
    out = start.out
    cfg = dict(cfg)
    train_cfg = dict(cfg.get("train", {}))
    started = time.perf_counter()
    seed_everything(int(train_cfg.get("seed", 0)), rank)
    exp = build_experiment(
        cfg, data_root=data_root, device=device, rank=rank, world_size=world_size
    )
    run_folder.begin(start, cfg, rank=rank)  # built: only now is the folder written
    callbacks = list(callbacks)
    for cb in callbacks:
        cb.setup(exp)
    model = exp.model
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    amp = train_cfg.get("amp", "bf16" if device.type == "cuda" else "none")
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    eval_cfg = cfg.get("eval", {})
    history = fit(
        model,
        exp.train_loader,
        exp.val_loader,
        exp.criterion,
        exp.optimizer,
        epochs=int(train_cfg.get("epochs", 1)),
        metrics=exp.metrics,
        select=eval_cfg.get("select", "dice"),
        select_mode=eval_cfg.get("select_mode", "max"),
        scheduler=exp.scheduler,
        scaler=scaler,
        device=device,
        amp=amp,
        clip_grad=train_cfg.get("clip_grad"),
        infer=exp.infer,
        observe_view=exp.observe_view,
        output_transform=exp.output_transform,
        checkpoint_dir=str(out / "checkpoints"),
        checkpoint_every=int(train_cfg.get("checkpoint_every", 0)),
        resume=resume,
        config=cfg,
        log=log,
        step_log=step_log,
        patience=train_cfg.get("patience"),
        callbacks=callbacks,
    )
    results = report.evaluate_run(
        exp, out, device=device, amp=amp, checkpoint=tested_checkpoint(cfg), callbacks=callbacks
    )
    # this call's wall time, training and test (a resumed run counts only what it resumed)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    if rank == 0:
        report.write_run(out, cfg, history, results, exp)
    return exp, history, results
