"""MONAI's label layouts for calibrant's losses and ALM terms, each against the integer-label path.

``(B, 1, *spatial)`` float labels (MONAI's ``to_onehot_y=True`` layout) and one-hot ``(B, C, *)``
(``to_onehot_y=False``) give bitwise the same values, gradients, validation statistics and λ steps
as calibrant's ``(B, *spatial)`` integer labels; multi-label losses get (B, 1, *) labels one-hot
encoded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import calibrant  # noqa: F401  (registers)
from calibrant import LOSSES
from calibrant.alm import alm_terms
from calibrant.integrations import (
    ALMDriver,
    MonaiTargets,
    as_index_target,
    as_onehot_target,
    slot_names,
)

IGNORE = -100
MULTICLASS = [
    n
    for n in LOSSES.names(task="multiclass")
    if LOSSES.meta(n).get("inputs") != "two_view"  # BWCR takes two views
    and not LOSSES.meta(n).get("alm")  # the ALM objectives: below, with their statistics
]
MULTILABEL = LOSSES.names(task="multilabel")
SEGMENTATION_ALM = LOSSES.names(alm=True, spatial=True)


def _pair(generator, b=2, c=3, spatial=(6, 5), ignore=True):
    logits = (2 * torch.randn(b, c, *spatial, generator=generator)).requires_grad_()
    labels = torch.randint(0, c, (b, *spatial), generator=generator)
    if ignore:
        labels.view(-1)[::7] = IGNORE
    return logits, labels


def _monai_layouts(labels, c):
    """MONAI's (B, 1, *) float labels and one-hot (B, C, *) (ignored positions: no hot channel)."""
    channel = labels[:, None].float()
    valid = labels != IGNORE
    onehot = F.one_hot(labels.clamp(min=0), c).movedim(-1, 1) * valid[:, None]
    return {"channel": channel, "onehot": onehot, "onehot_float": onehot.float()}


def _value_and_grad(loss, logits, target):
    logits = logits.detach().clone().requires_grad_()
    value = loss(logits, target)
    value.backward()
    return value.detach(), logits.grad


# -- target layouts -------------------------------------------------------------------------------
def test_index_target_layouts(generator):
    logits, labels = _pair(generator)
    for name, t in _monai_layouts(labels, 3).items():
        assert torch.equal(as_index_target(t, logits), labels), name
    assert torch.equal(as_index_target(labels.int(), logits), labels)


def test_index_target_rejects_bad_inputs(generator):
    logits, labels = _pair(generator, ignore=False)
    with pytest.raises(ValueError, match="whole class indices"):
        as_index_target(labels[:, None].float() + 0.5, logits)
    onehot = F.one_hot(labels, 3).movedim(-1, 1)
    two_hot = onehot.clone()
    two_hot[0, :, 0, 0] = 1
    with pytest.raises(ValueError, match="several hot channels"):
        as_index_target(two_hot, logits)
    with pytest.raises(ValueError, match="only 0 and 1"):
        as_index_target(onehot * 2, logits)
    empty = onehot.clone()
    empty[0, :, 0, 0] = 0
    with pytest.raises(ValueError, match="without a hot channel"):
        as_index_target(empty, logits, ignore_index=None)
    with pytest.raises(ValueError, match="channels"):
        as_index_target(torch.zeros(2, 2, 6, 5), logits)
    with pytest.raises(ValueError, match="batch or spatial"):
        as_index_target(torch.zeros(2, 1, 6, 4), logits)


@pytest.mark.parametrize("name", MULTICLASS)
def test_multiclass_losses_accept_monai_layouts(name, generator):
    loss = LOSSES.build(name)
    logits, labels = _pair(generator)
    want_v, want_g = _value_and_grad(loss, logits, labels)
    wrapped = MonaiTargets(loss)
    for layout, target in _monai_layouts(labels, 3).items():
        v, g = _value_and_grad(wrapped, logits, target)
        assert torch.equal(v, want_v) and torch.equal(g, want_g), layout


@pytest.mark.parametrize("name", SEGMENTATION_ALM)
def test_segmentation_alm_objectives_accept_monai_layouts(name, generator):
    """Training value, gradient, validation statistics and λ step equal the integer path."""
    logits, labels = _pair(generator, spatial=(7, 6, 5))
    ref, wrapped = (
        LOSSES.build(name, num_classes=3),
        MonaiTargets(LOSSES.build(name, num_classes=3)),
    )
    want_v, want_g = _value_and_grad(ref, logits, labels)
    want_terms = ref.terms(logits, labels)
    alm_terms(ref)[0].observe(logits.detach(), labels)
    want_record = alm_terms(ref)[0].step()
    for layout, target in _monai_layouts(labels, 3).items():
        v, g = _value_and_grad(wrapped, logits, target)
        assert torch.equal(v, want_v) and torch.equal(g, want_g), layout
        terms = wrapped.terms(logits, target)
        assert all(torch.equal(terms[k], want_terms[k]) for k in want_terms)
    fresh = MonaiTargets(LOSSES.build(name, num_classes=3))
    fresh.observe(logits.detach(), _monai_layouts(labels, 3)["channel"])
    assert fresh.step() == [want_record]


@pytest.mark.parametrize("name", MULTILABEL)
def test_multilabel_losses_take_monai_index_labels(name, generator):
    """``target="onehot"``: (B, 1, *) labels are one-hot encoded (MONAI's to_onehot_y=True)."""
    loss = LOSSES.build(name)
    logits, labels = _pair(generator)
    onehot = as_onehot_target(labels, logits)
    assert onehot.shape == logits.shape
    assert bool((onehot[:, 0] == IGNORE).eq(labels == IGNORE).all())
    if LOSSES.meta(name).get("target_dtype") == "long":
        onehot = onehot.long()
    want_v, want_g = _value_and_grad(loss, logits, onehot)
    wrapped = MonaiTargets(loss, target="onehot")
    for target in (labels[:, None].float(), labels, onehot):  # (B,1,*), (B,*), already one-hot
        v, g = _value_and_grad(wrapped, logits, target)
        assert torch.equal(v, want_v) and torch.equal(g, want_g)


def test_binary_sigmoid_channel_is_already_multilabel(generator):
    logits = torch.randn(2, 1, 4, 4, generator=generator)
    target = torch.randint(0, 2, (2, 1, 4, 4), generator=generator).float()
    assert as_onehot_target(target, logits) is target


def test_monai_meta_tensor_targets(generator):
    monai_data = pytest.importorskip("monai.data")
    logits, labels = _pair(generator)
    meta = monai_data.MetaTensor(labels[:, None].float())
    out = as_index_target(meta, logits)
    assert type(out) is torch.Tensor and torch.equal(out, labels)
    loss = MonaiTargets(LOSSES.build("crac", num_classes=3))
    assert torch.equal(loss(monai_data.MetaTensor(logits), meta), loss(logits, labels))


def test_slot_names():
    crac = alm_terms(LOSSES.build("crac", num_classes=2))[0]
    assert slot_names(crac, ["bg", "fg"]) == ["inner/bg", "inner/fg", "boundary/bg", "boundary/fg"]
    crac_class = alm_terms(LOSSES.build("crac_class", num_classes=2))[0]
    assert slot_names(crac_class) == ["class 0", "class 1"]
    assert slot_names(alm_terms(LOSSES.build("crac_region", num_classes=2))[0]) == [
        "inner",
        "boundary",
    ]
    assert slot_names(alm_terms(LOSSES.build("crac_global", num_classes=2))[0]) == ["all"]
    with pytest.raises(ValueError, match="class_names has 3"):
        slot_names(crac, ["a", "b", "c"])
    with pytest.raises(ValueError, match="holds no ALM term"):
        ALMDriver(LOSSES.build("ce"))
