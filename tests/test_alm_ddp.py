"""DDP: a 2-process gloo run gives the same λ and ρ as one process on the same validation data."""

import pytest
import torch

from calibrant.registry import LOSSES
from tests._ddp import run_ddp

EPOCHS = 3


def _batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for b in (1, 3, 2, 2):  # uneven batch sizes
        logits = 2 * torch.randn(b, 3, 10, 9, generator=g)
        y = torch.randint(0, 3, (b, 5, 3), generator=g).repeat_interleave(2, 1)
        y = y.repeat_interleave(3, 2)
        y[:, 0, :2] = -100
        out.append((logits, y))
    return out


def _run(alm, batches):
    for epoch in range(EPOCHS):
        for logits, y in batches:
            alm.observe(logits * (1.0 - 0.2 * epoch), y)
        alm.step()
    return alm.lam.clone(), alm.rho.clone(), alm.history()


def _build():
    return LOSSES.build("crac", num_classes=3, with_ce=False, rho_step=1, mu=0.95)


def _worker(rank, world_size, batches):
    shards = [batches[:1], batches[1:]]  # uneven split: 1 image vs 7 images
    return _run(_build(), shards[rank])


@pytest.mark.ddp
def test_two_process_gloo_equals_single_process():
    batches = _batches()
    lam1, rho1, hist1 = _run(_build(), batches)
    results = run_ddp(_worker, world_size=2, args=(batches,))
    for lam, rho, hist in results:
        torch.testing.assert_close(lam, lam1, rtol=1e-12, atol=0)
        assert torch.equal(rho, rho1)
        assert len(hist) == EPOCHS
    assert rho1.max() > 0.1  # rho moved, so its equality is informative
    # the research code's equal-weighted mean of per-rank means would differ on this split
    per_rank = [_run(_build(), shard)[0] for shard in (batches[:1], batches[1:])]
    assert not torch.allclose((per_rank[0] + per_rank[1]) / 2, lam1, rtol=1e-3)
