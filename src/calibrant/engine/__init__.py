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

from calibrant.engine.inference import evaluate, predict_volume, sliding_window
from calibrant.engine.loop import fit
from calibrant.engine.steps import (
    Callback,
    EpochSampler,
    TrainStep,
    autocast_context,
    loss_terms,
    train_one_epoch,
)

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
