"""Exact resume: N epochs == N/2 epochs + save + load in a fresh process + N/2 epochs (bitwise)."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from calibrant.alm import alm_terms
from calibrant.registry import LOSSES

EPOCHS = 4


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 1, 12, 12, generator=g)
    y = torch.randint(0, 3, (20, 4, 4), generator=g)
    y = y.repeat_interleave(3, 1).repeat_interleave(3, 2)  # blocks: inner and boundary pixels
    x = x + y.unsqueeze(1).float()  # learnable signal
    return x[:12], y[:12], x[12:], y[12:]


def _build():
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    loss = LOSSES.build("crac", num_classes=3, rho_step=1, mu=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return model, loss, opt


def train(until: int, ckpt_in: str | None = None, ckpt_out: str | None = None) -> dict:
    """Train the tiny CRaC model up to epoch ``until``; optionally resume from / save to a file."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        xt, yt, xv, yv = _data()
        model, loss, opt = _build()
        (alm,) = alm_terms(loss)
        start = 0
        if ckpt_in is not None:
            ckpt = torch.load(ckpt_in, weights_only=True)
            model.load_state_dict(ckpt["model"])
            loss.load_state_dict(ckpt["loss"])
            opt.load_state_dict(ckpt["opt"])
            start = ckpt["epoch"]
        for epoch in range(start, until):
            model.train()
            perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(100 + epoch))
            for i in range(0, len(xt), 4):
                idx = perm[i : i + 4]
                opt.zero_grad()
                loss(model(xt[idx]), yt[idx]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                for i in range(0, len(xv), 3):
                    alm.observe(model(xv[i : i + 3]), yv[i : i + 3])
            alm.step()
        state = {
            "model": model.state_dict(),
            "loss": loss.state_dict(),
            "opt": opt.state_dict(),
            "epoch": until,
        }
        if ckpt_out is not None:
            torch.save(state, ckpt_out)
        return state
    finally:
        torch.set_num_threads(threads)


def test_resume_in_fresh_process_is_bitwise_identical(tmp_path: Path):
    full = train(EPOCHS)
    half = tmp_path / "half.pt"
    resumed = tmp_path / "resumed.pt"
    train(EPOCHS // 2, ckpt_out=str(half))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    code = (
        "import sys; from tests.test_alm_resume import train; "
        "train(int(sys.argv[1]), sys.argv[2], sys.argv[3])"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(EPOCHS), str(half), str(resumed)],
        check=True,
        cwd=root,
        env=env,
        timeout=300,
    )
    other = torch.load(resumed, weights_only=True)
    alm_full = {k: v for k, v in full["loss"].items() if k.startswith("parts.alm.")}
    assert alm_full["parts.alm.epoch"].item() == EPOCHS
    # the run moves both lambda and rho, so the comparison is not trivially satisfied
    assert alm_full["parts.alm.rho"].max() > 0.1
    assert alm_full["parts.alm.lam"].max() > 1e-3
    for key, value in full["loss"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other["loss"][key]), key
    assert full["loss"]["parts.alm._extra_state"] == other["loss"]["parts.alm._extra_state"]
    assert len(other["loss"]["parts.alm._extra_state"]["history"]) == EPOCHS
    for key, value in full["model"].items():
        assert torch.equal(value, other["model"][key]), key
