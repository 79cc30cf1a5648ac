import itertools

import pytest
import torch
import torch.nn.functional as F

from calibrant.alm import (
    ALMPenalty,
    MarginConstraint,
    NeighborConstraint,
    alm_terms,
    get_penalty,
)
from calibrant.alm.rules import ALMState, RuleConfig, Statistics, update
from calibrant.losses.classification import CrossEntropyLoss
from calibrant.losses.combine import WeightedSum
from calibrant.registry import LOSSES

IGNORE = -100

# ---------------------------------------------------------------- slow references (loops)


def _ref_neighbor(target, num_classes, scale, ignore_index=IGNORE):
    """Loop reference: tau (label-0 padding, ignored neighbours absent), boundary flag."""
    b, hh, ww = target.shape
    tau = torch.zeros(b, num_classes, hh, ww, dtype=torch.float64)
    boundary = torch.zeros(b, hh, ww, dtype=torch.bool)
    for n in range(b):
        for i in range(hh):
            for j in range(ww):
                if target[n, i, j] == ignore_index:
                    continue
                labels = []
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        ii, jj = i + di, j + dj
                        lab = int(target[n, ii, jj]) if 0 <= ii < hh and 0 <= jj < ww else 0
                        if lab != ignore_index:
                            labels.append(lab)
                for lab in labels:
                    tau[n, lab, i, j] += 1.0 / len(labels)
                boundary[n, i, j] = len(set(labels)) >= 2
    s = torch.where(boundary, 1.0, float(scale)).unsqueeze(1).double()
    return tau * s, boundary


def _ref_crac_h(logits, target, scale):
    tau, boundary = _ref_neighbor(target, logits.shape[1], scale)
    return (tau - logits.double()).abs(), boundary


def _random_seg(generator, b=3, k=4, h=6, w=7, ignore_frac=0.1):
    logits = 3 * torch.randn(b, k, h, w, generator=generator)
    target = torch.randint(0, k, (b, h, w), generator=generator)
    # blocky labels so that inner pixels exist
    target = target[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w]
    drop = torch.rand(b, h, w, generator=generator) < ignore_frac
    return logits, target.masked_fill(drop, IGNORE).contiguous()


# ---------------------------------------------------------------- penalties


@pytest.mark.parametrize("name", ["phr", "p2", "p3", "relu"])
def test_penalty_derivative_equals_autograd(name, generator):
    z = (4 * torch.rand(200, generator=generator, dtype=torch.float64) - 2).requires_grad_()
    lam = torch.rand(200, generator=generator, dtype=torch.float64) + 0.1
    rho = 3 * torch.rand(200, generator=generator, dtype=torch.float64) + 0.1
    value, grad = get_penalty(name)(z, lam, rho)
    (auto,) = torch.autograd.grad(value.sum(), z)
    torch.testing.assert_close(grad, auto)
    # P(0) = 0 for all four
    v0, _ = get_penalty(name)(torch.zeros(3, dtype=torch.float64), lam[:3], rho[:3])
    assert torch.equal(v0, torch.zeros(3, dtype=torch.float64))


def test_penalty_values_match_table():
    z, lam, rho = torch.tensor([-1.0, 2.0]), 0.5, 2.0
    v, g = get_penalty("phr")(z, lam, rho)
    assert v.tolist() == pytest.approx([-0.0625, 0.5 * 2 + 2 * 4 / 2]) and g.tolist() == [0, 4.5]
    v, g = get_penalty("p2")(z, lam, rho)
    assert v.tolist() == pytest.approx([-0.5 / 3, 1 + 4 + 4 * 8 / 6])
    assert g.tolist() == pytest.approx([0.5 / 9, 0.5 + 4 + 8])
    v, g = get_penalty("p3")(z, lam, rho)
    assert v.tolist() == pytest.approx([-0.5 / 3, 1 + 4]) and g.tolist() == pytest.approx(
        [0.5 / 9, 4.5]
    )


def test_phr_zero_gradient_with_slack(generator):
    z = -(torch.rand(50, generator=generator) + 1.0)  # lam + rho z <= 0.5 - 1 < 0
    z.requires_grad_()
    value, grad = get_penalty("phr")(z, 0.5, 1.0)
    assert torch.equal(grad, torch.zeros(50))
    value.sum().backward()
    assert torch.equal(z.grad, torch.zeros(50))
    # through the module: equal logits -> every margin constraint satisfied with slack (h = -1)
    alm = ALMPenalty(3, MarginConstraint(margin=2.0))
    logits = torch.zeros(4, 3, requires_grad=True)
    alm(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert torch.equal(logits.grad, torch.zeros(4, 3))


# ---------------------------------------------------------------- constraints


def test_region_exhaustive_over_all_3x3_patches_of_4_labels():
    patches = torch.tensor(list(itertools.product(range(4), repeat=9))).reshape(-1, 3, 3)
    v = NeighborConstraint()(torch.zeros(len(patches), 4, 3, 3), patches)
    expected = torch.tensor([len(set(p.flatten().tolist())) >= 2 for p in patches])
    assert torch.equal(v.region[:, 1, 1], expected)
    assert int(expected.sum()) == 4**9 - 4


def test_neighbor_parts_region_exhaustive_over_all_3x3_patches_of_4_labels():
    from calibrant.alm.constraints import neighbor_parts

    patches = torch.tensor(list(itertools.product(range(4), repeat=9))).reshape(-1, 3, 3)
    counts, f, bnd = neighbor_parts(patches, None, 4, inner_target_scale=5.0)
    expected = torch.tensor([len(set(p.flatten().tolist())) >= 2 for p in patches])
    assert bnd.dtype == torch.float32 and f.dtype == torch.float32
    assert torch.equal(bnd[:, 1, 1], expected.float())
    v = NeighborConstraint(inner_target_scale=5.0)(torch.zeros(len(patches), 4, 3, 3), patches)
    assert torch.equal(bnd, v.region.float())  # label-0 padding at the edges as well
    torch.testing.assert_close(counts * f, v.h)  # h = |counts·f − 0|
    torch.testing.assert_close(f, torch.where(v.region, 1 / 9, 5 / 9).unsqueeze(1))


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_neighbor_violation_matches_loops(scale, generator):
    logits, target = _random_seg(generator)
    v = NeighborConstraint(inner_target_scale=scale)(logits, target, IGNORE)
    h_ref, b_ref = _ref_crac_h(logits, target, scale)
    m = target != IGNORE
    assert torch.equal(v.mask, m)
    assert torch.equal(v.region & m, b_ref)
    torch.testing.assert_close(v.h.double() * m[:, None], h_ref * m[:, None])


def test_margin_violation_loops(generator):
    logits = torch.randn(5, 4, generator=generator)
    h = MarginConstraint(margin=3.0, normalize=True)(logits, torch.zeros(5, dtype=torch.long)).h
    for i in range(5):
        for k in range(4):
            d = max(logits[i].tolist()) - logits[i, k].item()
            assert h[i, k].item() == pytest.approx((d - 3.0) / 3.0, abs=1e-6)
    raw = MarginConstraint(margin=3.0, normalize=False)(logits, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(raw.h, h * 3.0)


# ---------------------------------------------------------------- training penalty


def test_crac_forward_matches_reference_and_grad(generator):
    logits, target = _random_seg(generator)
    alm = LOSSES.build("crac", num_classes=4, with_ce=False)
    lam = torch.rand(2, 4, generator=generator, dtype=torch.float64)
    rho = torch.rand(2, 4, generator=generator, dtype=torch.float64) + 0.1
    alm.lam.copy_(lam)
    alm.rho.copy_(rho)
    x = logits.clone().requires_grad_()
    got = alm(x, target)
    got.backward()
    # reference: code's hcat mean over N_valid * 2K entries, PHR via autograd in float64
    xr = logits.double().requires_grad_()
    tau, boundary = _ref_neighbor(target, 4, 5.0)
    m = (target != IGNORE)[:, None]
    h = (tau - xr).abs()
    r = boundary[:, None].long().expand_as(h)
    k = torch.arange(4).view(1, 4, 1, 1).expand_as(h)
    val, _ = get_penalty("phr")(h, lam[r, k], rho[r, k])
    ref = (val * m).sum() / (m.sum() * 8)
    ref.backward()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-7)


def test_ignored_pixels_never_enter(generator):
    logits, target = _random_seg(generator, ignore_frac=0.3)
    other = logits.clone()
    other[(target == IGNORE)[:, None].expand_as(other)] = 1e4
    for build in (
        lambda: LOSSES.build("crac", num_classes=4, with_ce=False),
        lambda: LOSSES.build("cals_alm", num_classes=4, with_ce=False),
        lambda: _fixed_nacl_term(4),
    ):
        a, b = build(), build()
        x = other.clone().requires_grad_()
        assert torch.equal(a(logits, target), b(x, target))
        b(x, target).backward()
        assert bool((x.grad[(target == IGNORE)[:, None].expand_as(x)] == 0).all())
        a.observe(logits, target)
        b.observe(other, target)
        a.step()
        b.step()
        assert a.lam.tolist() == b.lam.tolist()


def _fixed_nacl_term(num_classes, **constraint):
    """NACL written as an ALM term: one fixed λ = 0.1 on ``|τ − l|`` (never updated)."""
    return ALMPenalty(
        num_classes,
        NeighborConstraint(**constraint),
        layout="global",
        rule="fixed",
        penalty="relu",
        lambda_init=0.1,
        rho_step=0,
    )


@pytest.mark.parametrize("padding", ["label0", "zeros"])
def test_nacl_is_one_objective_the_loss_equals_the_fixed_alm_term(padding, generator):
    """The loss ``nacl`` (one implementation) is the fixed-λ ALM term plus CE, value and grad."""
    logits = torch.randn(2, 3, 8, 9, generator=generator, dtype=torch.float32)
    target = torch.randint(0, 3, (2, 8, 9), generator=generator)
    target[0, 0, :3] = IGNORE
    loss = LOSSES.build("nacl", padding=padding)
    as_alm = WeightedSum({"ce": CrossEntropyLoss(), "alm": _fixed_nacl_term(3, padding=padding)})
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    v1, v2 = loss(x1, target), as_alm(x2, target)
    torch.testing.assert_close(v1, v2, rtol=1e-6, atol=1e-7)
    v1.backward()
    v2.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)
    term = as_alm.parts["alm"]  # the fixed rule never updates
    term.observe(logits, target)
    term.step()
    assert term.lam.tolist() == [0.1]


def test_nacl_matches_monai(generator):
    import monai.losses as monai  # a test dependency: missing means failure

    logits = torch.randn(2, 3, 8, 9, generator=generator)
    target = torch.randint(0, 3, (2, 8, 9), generator=generator)
    ours = LOSSES.build("nacl", padding="zeros")
    peer = monai.NACLLoss(classes=3, dim=2, kernel_size=3, kernel_ops="mean", alpha=0.1)
    torch.testing.assert_close(ours(logits, target), peer(logits, target))


# ---------------------------------------------------------------- dual updates


def test_crac_update_equals_closed_form(generator):
    alm = LOSSES.build("crac", num_classes=4, with_ce=False, rho_step=1)
    lam0 = torch.rand(2, 4, generator=generator, dtype=torch.float64) + 0.01
    rho0 = torch.rand(2, 4, generator=generator, dtype=torch.float64) + 0.1
    alm.lam.copy_(lam0)
    alm.rho.copy_(rho0)
    total = torch.zeros(2, 4, dtype=torch.float64)
    n_all = 0
    for _ in range(3):
        logits, target = _random_seg(generator)
        alm.observe(logits, target)
        h, boundary = _ref_crac_h(logits, target, 5.0)
        valid = target != IGNORE
        for r, region in enumerate((~boundary & valid, boundary & valid)):
            total[r] += (h * region[:, None]).sum((0, 2, 3))
        n_all += int(valid.sum())
    alm.step()
    torch.testing.assert_close(alm.lam, lam0 + rho0 * total / n_all, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(alm.prev, total / n_all, rtol=1e-6, atol=1e-9)
    assert torch.equal(alm.rho, rho0)  # no previous epoch yet


def test_per_region_mean_option(generator):
    alm = LOSSES.build("crac", num_classes=4, with_ce=False, per_region_mean=True)
    logits, target = _random_seg(generator)
    alm.observe(logits, target)
    alm.step()
    h, boundary = _ref_crac_h(logits, target, 5.0)
    valid = target != IGNORE
    for r, region in enumerate((~boundary & valid, boundary & valid)):
        mean = (h * region[:, None]).sum((0, 2, 3)) / region.sum()
        torch.testing.assert_close(alm.lam[r], 1e-6 + 0.1 * mean, rtol=1e-6, atol=1e-9)


def test_cals_update_equals_mean_of_clamped(generator):
    alm = LOSSES.build("cals_alm", num_classes=5, with_ce=False)
    lam0 = torch.rand(5, generator=generator, dtype=torch.float64)
    alm.lam.copy_(lam0)
    logits = 15 * torch.randn(40, 5, generator=generator)
    target = torch.randint(0, 5, (40,), generator=generator)
    target[:6] = IGNORE
    alm.observe(logits[:20], target[:20])
    alm.observe(logits[20:], target[20:])
    alm.step()
    expect = []
    for k in range(5):
        vals = []
        for i in range(6, 40):
            h = (logits[i].max().item() - logits[i, k].item() - 10.0) / 10.0
            vals.append(max(1e-6, lam0[k].item() + 1.0 * h))
        expect.append(min(max(sum(vals) / len(vals), 1e-6), 1e6))
    assert alm.lam.tolist() == pytest.approx(expect, rel=1e-6)


def _stats(curr, shape=(3,)):
    c = torch.as_tensor(curr, dtype=torch.float64)
    one = torch.ones(shape, dtype=torch.float64)
    return Statistics(c * 0, c, c * 0, one, one)


def test_rho_grows_exactly_on_schedule():
    cfg = RuleConfig(rho_init=0.1, rho_max=0.2, rho_step=10, gamma=1.2, mu=0.9)
    state = ALMState.init((3,), lambda_init=1e-6, rho_init=0.1)
    # slot 0: constant violation (always "not reduced"), slot 1: halves each epoch, slot 2: grows
    trajectory = []
    for e in range(45):
        state = update(state, _stats([1.0, 0.5**e, 1.1**e]), cfg)
        trajectory.append(state.rho.tolist())
    for e, rho in enumerate(trajectory):
        n = (e + 1) // 10  # rho epochs done so far (epochs 9, 19, 29, 39)
        expected0 = min(0.1 * 1.2**n, 0.2)
        assert rho[0] == pytest.approx(expected0), e
        assert rho[1] == pytest.approx(0.1), e
        assert rho[2] == pytest.approx(expected0), e
    assert trajectory[8][0] == 0.1 and trajectory[9][0] == pytest.approx(0.12)
    assert trajectory[-1][0] == 0.2  # clamped to rho_max


def test_lambda_step_schedule():
    cfg = RuleConfig(lambda_step=3, rho_step=0, rho_init=1.0)
    state = ALMState.init((1,), lambda_init=1e-6, rho_init=1.0)
    seen = []
    for _ in range(6):
        stats = Statistics(*(torch.tensor([x], dtype=torch.float64) for x in (2.0, 0, 0, 1, 1)))
        state = update(state, stats, cfg)
        seen.append(state.lam.item())
    assert seen == [1e-6, 1e-6, 2.0, 2.0, 2.0, 2.0]


def test_cals_hr_heuristic_rule(generator):
    alm = LOSSES.build("cals_hr", num_classes=3, with_ce=False)
    assert alm.lam.tolist() == [0.1] * 3
    x = torch.tensor([[20.0, 0.0, 15.0], [0.0, 25.0, 0.0]])
    y = torch.tensor([0, 1])
    # score_k = mean_i lam_k relu(d_ik - 10): d = [[0,20,5],[25,0,25]] -> [7.5, 5, 7.5] * 0.1
    alm.observe(x, y)
    rec = alm.step()
    assert rec["violation"] == pytest.approx([0.75, 0.5, 0.75])
    assert alm.lam.tolist() == pytest.approx([0.1] * 3)  # no previous score yet
    x2 = torch.tensor([[30.0, 0.0, 15.0], [0.0, 25.0, 0.0]])  # class 1 worse, class 2 better
    x2[0, 2] = 30.0 - 1.0  # d = [[0, 30, 1], [25, 0, 25]]: scores [7.5, 10, 7.5] * 0.1
    alm.observe(x2, y)
    assert alm.step()["violation"] == pytest.approx([0.75, 1.0, 0.75])
    assert alm.lam.tolist() == pytest.approx([0.1, 0.11, 0.1])  # only class 1 rose by > tau
    x3 = torch.tensor([[10.0, 0.0, 10.0], [0.0, 10.0, 0.0]])  # all d <= 10: scores 0 -> down
    alm.observe(x3, y)
    alm.step()
    assert alm.lam.tolist() == pytest.approx([0.1 / 1.1, 0.1, 0.1 / 1.1])


def test_heuristic_rule_mu_below_one_applies_up_then_down_as_the_research_code():
    """Issue 16 item 17: with μ < 1 both tests can hold; the research code's ``set_lambd``
    multiplies by γ, then divides by γ, so λ is unchanged in that band (not raised by γ)."""
    from calibrant.alm.rules import heuristic_update

    cfg = RuleConfig(rule="heuristic", penalty="relu", gamma=1.2, mu=0.9)
    lam = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    prev = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    # 0.95 and 1.05 lie in the band (0.9, 1/0.9): both fire; 2.0 only rises, 0.5 only falls
    score = torch.tensor([0.95, 1.05, 2.0], dtype=torch.float64)
    new = heuristic_update(lam, score, prev, cfg)
    ref = lam.clone()  # the research code, statement by statement
    ref = torch.where(score > prev * cfg.mu, ref * cfg.gamma, ref)
    ref = torch.where(score < prev / cfg.mu, ref / cfg.gamma, ref)
    assert torch.equal(new, ref)
    assert new.tolist() == pytest.approx([0.5, 0.5, 0.6], rel=1e-15)
    low = heuristic_update(lam, torch.full((3,), 0.5, dtype=torch.float64), prev, cfg)
    assert low.tolist() == pytest.approx([0.5 / 1.2] * 3)
    # the same through ALMPenalty(rule="heuristic"), which keeps the ALM default μ = 0.9
    alm = ALMPenalty(
        2, MarginConstraint(normalize=False), rule="heuristic", penalty="relu", lambda_init=0.1
    )
    assert alm.cfg.mu == 0.9
    y = torch.tensor([0])
    alm.observe(torch.tensor([[20.0, 0.0]]), y)  # d = [0, 20]: scores 0.1 * [0, 10] = [0, 1]
    alm.step()
    alm.observe(torch.tensor([[20.2, 0.0]]), y)  # scores [0, 1.02], inside (0.9, 1/0.9)
    alm.step()
    assert alm.lam.tolist() == pytest.approx([0.1, 0.1], rel=1e-12)  # was [0.1, 0.12]


# ---------------------------------------------------------------- toy constrained problem


def _blobs(n, g):
    centers = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 5.0]])
    y = torch.randint(0, 3, (n,), generator=g)
    return centers[y] + 0.7 * torch.randn(n, 2, generator=g), y


def _train_toy(term, epochs=10, steps=20):
    g = torch.Generator().manual_seed(0)
    xt, yt = _blobs(300, g)
    xv, yv = _blobs(300, g)
    model = torch.nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(0.1 * torch.randn(3, 2, generator=g))
        model.bias.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    loss = WeightedSum({"ce": CrossEntropyLoss(), "alm": term})
    violation = []
    for _ in range(epochs):
        for _ in range(steps):
            opt.zero_grad()
            loss(model(xt), yt).backward()
            opt.step()
        with torch.no_grad():
            out = model(xv)
            term.observe(out, yv)
            term.step()
            violation.append(term.constraint(out, yv).h.clamp_min(0).mean().item())
    acc = (model(xv).argmax(1) == yv).float().mean().item()
    return violation, acc


def test_toy_problem_alm_reaches_feasibility_fixed_lambda_does_not():
    margin = MarginConstraint(margin=2.0)
    alm_v, alm_acc = _train_toy(ALMPenalty(3, margin, rho_init=10.0))
    fix_v, fix_acc = _train_toy(
        ALMPenalty(3, margin, rule="fixed", penalty="relu", lambda_init=1e-3)
    )
    assert alm_acc > 0.99 and fix_acc > 0.99
    # ALM: the mean positive violation of the normalised margin settles near 0 and stays there
    assert alm_v[-1] < 0.05 and abs(alm_v[-1] - alm_v[-4]) < 0.01
    # fixed small lambda: the margin constraint is violated by a wide and growing amount
    assert fix_v[-1] > 1.0 and fix_v[-1] > fix_v[len(fix_v) // 2]


# ---------------------------------------------------------------- state, presets, errors


def test_state_dict_round_trip_with_history(generator):
    a = LOSSES.build("crac", num_classes=4, with_ce=False, rho_step=1)
    for _ in range(3):
        logits, target = _random_seg(generator)
        a.observe(logits, target)
        a.step()
    logits, target = _random_seg(generator)
    a.observe(logits, target)  # pending accumulators travel too
    b = LOSSES.build("crac", num_classes=4, with_ce=False, rho_step=1)
    b.load_state_dict(a.state_dict())
    for name, buf in a.named_buffers():
        assert torch.equal(buf, dict(b.named_buffers())[name]), name
    assert b.history() == a.history() and len(b.history()) == 3
    assert [r["epoch"] for r in a.history()] == [0, 1, 2]
    assert torch.tensor(a.history()[-1]["lambda"]).shape == (2, 4)
    assert a.step() == b.step()


def test_bad_configuration_errors():
    nc = NeighborConstraint()
    with pytest.raises(ValueError, match="unknown penalty 'php'"):
        ALMPenalty(3, nc, penalty="php")
    with pytest.raises(ValueError, match="lambda_min .* must not exceed lambda_max"):
        ALMPenalty(3, nc, lambda_min=2.0, lambda_max=1.0)
    with pytest.raises(ValueError, match="rho_max"):
        ALMPenalty(3, nc, rho_init=2.0, rho_max=1.0)
    with pytest.raises(ValueError, match="layout must be one of"):
        ALMPenalty(3, nc, layout="pixel")
    with pytest.raises(ValueError, match="needs pixel regions"):
        ALMPenalty(3, MarginConstraint(), layout="region_class")
    with pytest.raises(ValueError, match="lambda_init"):
        ALMPenalty(3, nc, lambda_init=0.0)
    with pytest.raises(ValueError, match="inner_target_scale"):
        NeighborConstraint(inner_target_scale=-1.0)
    crac = LOSSES.build("crac", num_classes=4, with_ce=False)
    with pytest.raises(ValueError, match=r"8 ALM slots of shape \(2, 4\).*'class' with 4 slots"):
        LOSSES.build("crac_class", num_classes=4, with_ce=False).load_state_dict(crac.state_dict())
    with pytest.raises(ValueError, match="num_classes=4"):
        crac(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        crac(torch.zeros(1, 4, 4, 4), torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match="NaN"):
        crac(torch.full((1, 4, 4, 4), float("nan")), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(KeyError, match="unknown loss 'cracc'; did you mean 'crac'"):
        LOSSES.build("cracc", num_classes=4)


@pytest.mark.parametrize(
    "name,shape,rho",
    [
        ("cals_alm", (4,), 1.0),
        ("cals_hr", (4,), 1.0),
        ("crac", (2, 4), 0.1),
        ("crac_global", (1,), 0.1),
        ("crac_class", (4,), 0.1),
        ("crac_region", (2,), 0.1),
    ],
)
def test_presets_build_and_train_step(name, shape, rho, generator):
    loss = LOSSES.build(name, num_classes=4)
    (alm,) = alm_terms(loss)
    assert tuple(alm.lam.shape) == shape and alm.rho.unique().tolist() == [rho]
    logits, target = _random_seg(generator)
    x = logits.requires_grad_()
    parts = loss.terms(x, target)
    assert sorted(parts) == ["alm", "ce"]
    torch.testing.assert_close(parts["ce"], F.cross_entropy(logits, target, ignore_index=IGNORE))
    loss(x, target).backward()
    assert torch.isfinite(x.grad).all()
    alm.observe(logits, target)
    rec = alm.step()
    assert torch.tensor(rec["lambda"]).shape == shape


def test_preset_defaults():
    cals = LOSSES.build("cals_alm", num_classes=3, with_ce=False)
    assert cals.constraint == MarginConstraint(margin=10.0, normalize=True)
    assert (cals.cfg.rho_step, cals.cfg.gamma, cals.cfg.mu, cals.cfg.rho_max) == (10, 1.2, 0.9, 10)
    crac = LOSSES.build("crac", num_classes=3, with_ce=False)
    assert crac.constraint.inner_target_scale == 5.0 and crac.cfg.rho_init == 0.1
    assert crac.lam.unique().tolist() == [1e-6]
    hr = LOSSES.build("cals_hr", num_classes=3, with_ce=False)
    assert (hr.cfg.gamma, hr.cfg.mu, hr.constraint.normalize) == (1.1, 1.1, False)


@pytest.mark.parametrize(
    "shape,k", [((2, 9), 3), ((2, 7, 8), 3), ((2, 7, 8), 5), ((2, 4, 5, 6), 3)]
)
def test_fast_label0_path_equals_shared_helpers(shape, k, generator):
    from calibrant._tensor import boundary_mask, neighbor_proportions

    target = torch.randint(0, 3, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < 0.15] = IGNORE
    logits = torch.randn(shape[0], 3, *shape[1:], generator=generator)
    v = NeighborConstraint(kernel_size=k, inner_target_scale=4.0)(logits, target, IGNORE)
    region = boundary_mask(target, kernel_size=k, ignore_index=IGNORE)
    tau = neighbor_proportions(target, 3, kernel_size=k, ignore_index=IGNORE)
    tau = torch.where(region.unsqueeze(1), tau, 4.0 * tau)
    m = (target != IGNORE).unsqueeze(1)
    assert torch.equal(v.region, region)
    torch.testing.assert_close(v.h * m, (tau - logits).abs() * m)


@pytest.mark.parametrize("layout", ["global", "class", "region", "region_class"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (2, 4, 5, 6, 4), (1, 2, 13)])
@pytest.mark.parametrize("ignore", [False, True])
def test_fused_neighbor_phr_equals_generic_path(layout, shape, ignore):
    g = torch.Generator().manual_seed(sum(shape))
    k = shape[1]
    alm = ALMPenalty(k, NeighborConstraint(inner_target_scale=5.0), layout=layout)
    alm.lam.copy_(torch.rand(alm.lam.shape, generator=g))
    alm.rho.copy_(torch.rand(alm.rho.shape, generator=g) + 0.1)
    x = torch.randn(shape, generator=g, requires_grad=True)
    y = torch.randint(0, k, (shape[0], *shape[2:]), generator=g)
    if ignore:
        y[torch.rand(y.shape, generator=g) < 0.2] = IGNORE
    assert alm._fast_neighbor_phr(x, y) is not None
    value = alm(x, y)
    (grad,) = torch.autograd.grad(value, x)
    alm._fast_neighbor_phr = lambda *a: None  # the generic constraint + PenaltyMean path
    ref = alm(x, y)
    (ref_grad,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_fused_neighbor_phr_gradcheck():
    from calibrant.alm.constraints import neighbor_parts
    from calibrant.alm.kernels import NeighborPHR

    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (2, 5, 6), generator=g)
    for mask in (None, torch.rand(y.shape, generator=g) > 0.3):
        counts, f, bnd = neighbor_parts(y, mask, 3, inner_target_scale=5.0)
        x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
        lam = torch.rand(2, 3, generator=g, dtype=torch.float64)
        rho = torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.1
        m = None if mask is None else mask.unsqueeze(1).double()
        args = (counts.double(), f.double(), bnd.unsqueeze(1).double(), m, lam, rho, 7.0)
        assert torch.autograd.gradcheck(lambda z, a=args: NeighborPHR.apply(z, *a), (x,))


def test_fused_neighbor_phr_rejects_nan():
    alm = LOSSES.build("crac", num_classes=3, with_ce=False)
    x = torch.zeros(1, 3, 4, 4)
    x[0, 1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        alm(x, torch.zeros(1, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("layout", ["global", "class", "region", "region_class"])
@pytest.mark.parametrize("shape", [(3, 4, 20, 24), (2, 3, 6, 7, 5), (1, 2, 300, 300)])
def test_fast_observe_equals_the_unfused_statistics(layout, shape, generator, monkeypatch):
    from calibrant.alm import ALMPenalty, NeighborConstraint

    k = shape[1]
    logits = 4 * torch.randn(shape, generator=generator)
    target = torch.randint(0, k, (shape[0], *shape[2:]), generator=generator)
    target[:, : shape[2] // 2] = 0  # large inner regions as well as boundaries

    def build():
        alm = ALMPenalty(
            k,
            NeighborConstraint(inner_target_scale=5.0),
            layout=layout,
            lambda_min=0.2,
            lambda_init=0.2,
            lambda_max=0.9,  # both clamps active
        )
        g = torch.Generator().manual_seed(1)
        alm.lam.copy_(torch.rand(alm.lam.shape, generator=g, dtype=alm.lam.dtype))
        alm.rho.copy_(torch.rand(alm.rho.shape, generator=g, dtype=alm.rho.dtype) + 0.5)
        return alm

    fast, slow = build(), build()
    for _ in range(2):
        fast.observe(logits, target)
    monkeypatch.setattr(type(slow), "_fast_observe", lambda self, *a: False)
    for _ in range(2):
        slow.observe(logits, target)
    for name in ("acc_grad", "acc_viol", "acc_value"):
        torch.testing.assert_close(
            getattr(fast, name), getattr(slow, name), rtol=1e-5, atol=1e-3, msg=name
        )
    assert torch.equal(fast.acc_count, slow.acc_count)
    assert torch.equal(fast.acc_pixels, slow.acc_pixels)
    assert fast.acc_grad.abs().sum() > 0


def test_fast_observe_not_taken_with_ignored_pixels(generator):
    from calibrant.alm import ALMPenalty, NeighborConstraint

    alm = ALMPenalty(3, NeighborConstraint(), layout="region_class")
    target = torch.randint(0, 3, (2, 8, 8), generator=generator)
    target[0, 0, 0] = -100
    assert not alm._fast_observe(torch.randn(2, 3, 8, 8, generator=generator), target)
    assert alm._fast_observe(torch.randn(2, 3, 8, 8, generator=generator), target.clamp_min(0))
