"""Post-hoc calibrators: recovery of a known temperature, brute-force optimum, streaming, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from calibrant.posthoc import (
    DEFAULT_GRID,
    ClasswiseTemperature,
    TemperatureScaling,
    VectorScaling,
)
from calibrant.registry import CALIBRATORS


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _synthetic(generator, n=20000, c=10, temperature=2.5, scale=2.0):
    """Calibrated logits z (labels drawn from softmax(z)); observed logits = T * z."""
    z = torch.randn(n, c, generator=generator) * scale
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=generator).squeeze(1)
    return temperature * z, y


def nll_np(logits, y, t):
    x = logits / t
    return float(np.mean(logsumexp(x, axis=1) - x[np.arange(len(y)), y]))


def brute_force_temperature(logits, y):
    x, yy = logits.double().numpy(), y.numpy()
    res = minimize_scalar(
        lambda s: nll_np(x, yy, np.exp(s)),
        bounds=(-5, 5),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(np.exp(res.x))


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_recovered(generator, true_t):
    logits, y = _synthetic(generator, temperature=true_t)
    ts = TemperatureScaling().fit(logits, y)
    assert float(ts.temperature) == pytest.approx(true_t, rel=0.02)


def test_matches_brute_force_and_nll_decreases(generator):
    logits, y = _synthetic(generator, n=5000, temperature=1.7)
    ts = TemperatureScaling().fit(logits, y)
    assert float(ts.temperature) == pytest.approx(brute_force_temperature(logits, y), rel=1e-5)
    before = nll_np(logits.double().numpy(), y.numpy(), 1.0)
    after = nll_np(ts(logits).double().numpy(), y.numpy(), 1.0)
    assert after <= before
    assert ts.fit_info_["nll_after"] == pytest.approx(after, rel=1e-5)
    assert torch.equal(ts(logits).argmax(1), logits.argmax(1))


def test_already_calibrated_never_worse(generator):
    # T* is 1 up to noise; the fit must not increase the NLL on the fit data.
    logits, y = _synthetic(generator, n=300, temperature=1.0)
    ts = TemperatureScaling(init_temperature=9.0).fit(logits, y)
    assert ts.fit_info_["nll_after"] <= ts.fit_info_["nll_before"]


def test_segmentation_ignore_and_subsample(generator):
    z = torch.randn(2, 4, 12, 12, generator=generator) * 2
    p = torch.softmax(z, 1).movedim(1, -1).reshape(-1, 4)
    y = torch.multinomial(p, 1, generator=generator).reshape(2, 12, 12)
    y_ign = y.clone()
    y_ign[:, :3] = -100
    # Ignored pixels' logits must not matter.
    z_garbage = z.clone()
    z_garbage[:, :, :3] = 1e4
    t1 = TemperatureScaling().fit(3 * z, y_ign).temperature
    t2 = TemperatureScaling().fit(3 * z_garbage, y_ign).temperature
    assert torch.equal(t1, t2)
    # Equal to fitting on the kept pixels only, as a flat classification problem.
    keep = (y_ign != -100).reshape(-1)
    flat = (3 * z).movedim(1, -1).reshape(-1, 4)[keep]
    t3 = TemperatureScaling().fit(flat, y.reshape(-1)[keep]).temperature
    assert float(t1) == pytest.approx(float(t3), rel=1e-6)
    # Subsample: deterministic given the generator, and uses only max_pixels elements.
    a = TemperatureScaling().fit(3 * z, y, max_pixels=100, generator=_g(1))
    b = TemperatureScaling().fit(3 * z, y, max_pixels=100, generator=_g(1))
    assert torch.equal(a.temperature, b.temperature) and a.fit_info_["num_elements"] == 100


def test_grid_method(generator):
    logits, y = _synthetic(generator, n=4000, temperature=2.0)
    ts = TemperatureScaling(method="grid").fit(logits, y)
    t = float(ts.temperature)
    assert t in DEFAULT_GRID and 1.7 <= t <= 2.3

    # Brute-force ECE over the same grid (loops over bins) picks the same T.
    def ece(x, yy, temp, n_bins=15):
        prob = torch.softmax(x.double() / temp, 1)
        conf, pred = prob.max(1)
        total = 0.0
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            sel = (conf > lo) & (conf <= hi) if b > 0 else (conf <= hi)
            if sel.any():
                total += float(sel.sum()) * abs(
                    float((pred[sel] == yy[sel]).double().mean()) - float(conf[sel].mean())
                )
        return total / len(yy)

    grid = [1.5, 1.8, 2.0, 2.2, 2.6]
    ts2 = TemperatureScaling(method="grid", grid=grid).fit(logits, y)
    best = min(grid, key=lambda temp: ece(logits, y, temp))
    assert float(ts2.temperature) == best
    ts3 = TemperatureScaling(method="grid", grid=grid, grid_metric="nll").fit(logits, y)
    assert float(ts3.temperature) == min(
        grid, key=lambda t: nll_np(logits.double().numpy(), y.numpy(), t)
    )


def test_vector_scaling_recovers_affine(generator):
    z = torch.randn(20000, 3, generator=generator) * 2
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=generator).squeeze(1)
    w_true = torch.tensor([2.0, 0.5, 1.0])
    b_true = torch.tensor([1.0, 0.0, -1.0])
    vs = VectorScaling(3).fit((z - b_true) / w_true, y)
    # Bias is identifiable only up to a common shift.
    assert torch.allclose(vs.weight.float(), w_true, rtol=0.05)
    assert torch.allclose((vs.bias - vs.bias.mean()).float(), b_true - b_true.mean(), atol=0.08)
    assert vs.fit_info_["nll_after"] <= vs.fit_info_["nll_before"]


def test_classwise_streaming_equals_one_shot(generator):
    vols = []
    for _ in range(3):
        z = torch.randn(1, 3, 10, 10, generator=generator) * 2
        p = torch.softmax(z, 1).movedim(1, -1).reshape(-1, 3)
        y = torch.multinomial(p, 1, generator=generator).reshape(1, 10, 10)
        y[0, 0, :4] = -100
        vols.append((z * torch.tensor([2.0, 1.0, 0.7]).view(1, 3, 1, 1), y))
    streamed = ClasswiseTemperature(3).fit_stream(vols)
    logits = torch.cat([v[0] for v in vols])
    target = torch.cat([v[1] for v in vols])
    oneshot = ClasswiseTemperature(3).fit(logits, target)
    assert torch.allclose(streamed.temperature, oneshot.temperature, rtol=1e-6)
    assert streamed.fit_info_["nll_after"] <= streamed.fit_info_["nll_before"]
    # Streaming scalar TS equals one-shot scalar TS too.
    a = TemperatureScaling().fit_stream(vols).temperature
    b = TemperatureScaling().fit(logits, target).temperature
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    with pytest.raises(ValueError, match="re-iterable"):
        ClasswiseTemperature(3).fit_stream(iter(vols))


def test_state_dict_round_trip(generator):
    logits, y = _synthetic(generator, n=2000, c=4, temperature=2.0)
    for fitted, fresh in [
        (TemperatureScaling().fit(logits, y), TemperatureScaling()),
        (VectorScaling(4).fit(logits, y), VectorScaling(4)),
        (ClasswiseTemperature(4).fit(logits, y), ClasswiseTemperature(4)),
    ]:
        fresh.load_state_dict(fitted.state_dict())
        assert torch.equal(fresh(logits), fitted(logits))
        assert not torch.equal(fresh(logits), logits)


def test_forward_shapes_and_dtypes(generator):
    ts = TemperatureScaling()
    ts.temperature.fill_(2.0)
    x = torch.randn(2, 3, 4, 5, generator=generator)
    assert torch.equal(ts(x), x / 2)
    assert ts(x.bfloat16()).dtype == torch.float32
    ct = ClasswiseTemperature(3)
    ct.temperature.copy_(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    assert torch.allclose(ct(x)[:, 2], x[:, 2] / 4)


def test_bad_input(generator):
    logits = torch.randn(8, 3, generator=generator)
    y = torch.randint(0, 3, (8,), generator=generator)
    bad = logits.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        TemperatureScaling().fit(bad, y)
    with pytest.raises(ValueError, match="shape"):
        TemperatureScaling().fit(logits, y[:5])
    with pytest.raises(ValueError, match="ignore"):
        TemperatureScaling().fit(logits, torch.full((8,), -100))
    with pytest.raises(ValueError, match="outside"):
        TemperatureScaling().fit(logits, torch.full((8,), 5))
    with pytest.raises(ValueError, match="num_classes"):
        VectorScaling(4).fit(logits, y)
    with pytest.raises(ValueError, match="num_classes"):
        ClasswiseTemperature(4)(logits)
    with pytest.raises(ValueError, match="method"):
        TemperatureScaling(method="adam")
    with pytest.raises(ValueError, match="empty"):
        TemperatureScaling().fit_stream([])


def test_registered():
    assert CALIBRATORS.build("temperature").__class__ is TemperatureScaling
    assert isinstance(CALIBRATORS.build("vector", num_classes=3), VectorScaling)
    assert isinstance(
        CALIBRATORS.build("classwise_temperature", num_classes=3), ClasswiseTemperature
    )


def test_spa_link_calibrator_gives_spa_probabilities():
    from calibrant.losses.spa import spa_probs
    from calibrant.posthoc import SPALink

    v = torch.linspace(-8, 8, 101).reshape(1, -1)
    params = {"zeta_neg": 5.0, "k_neg": 3.0, "b_neg": 1.0}
    link = SPALink(**params).fit(v, v > 0)
    torch.testing.assert_close(torch.sigmoid(link(v)), spa_probs(v, **params), rtol=1e-5, atol=1e-6)


def test_phi_calibrator_equals_phi_on_probabilities():
    from calibrant.losses.multilabel import phi_correct
    from calibrant.posthoc import PhiCorrection

    v = torch.linspace(-6, 6, 61, dtype=torch.float64).reshape(1, -1)
    phi = PhiCorrection(gamma_neg=4.0, gamma_pos=1.0, margin=0.05)
    expected = phi_correct(torch.sigmoid(v), 4.0, 1.0, 0.05).clamp(1e-6, 1 - 1e-6)
    torch.testing.assert_close(torch.sigmoid(phi(v)), expected, rtol=1e-9, atol=1e-9)
    # bijective for m = 0: the ranking of scores is kept (away from the eps clamp)
    inner = torch.linspace(-4, 4, 41, dtype=torch.float64).reshape(1, -1)
    assert bool((PhiCorrection(gamma_neg=2.0, gamma_pos=2.0)(inner).diff() > 0).all())


def test_phi_for_loss_reads_the_trained_loss_hyperparameters():
    from calibrant.posthoc import PhiCorrection
    from calibrant.registry import LOSSES

    asl = PhiCorrection.for_loss(LOSSES.build("asl"))
    assert (asl.gamma_neg, asl.gamma_pos, asl.margin) == (4.0, 0.0, 0.05)
    focal = PhiCorrection.for_loss(LOSSES.build("focal_binary", gamma=3.0))
    assert (focal.gamma_neg, focal.gamma_pos, focal.margin) == (3.0, 3.0, 0.0)
    with pytest.raises(ValueError, match="gamma"):
        PhiCorrection.for_loss(LOSSES.build("bce"))
