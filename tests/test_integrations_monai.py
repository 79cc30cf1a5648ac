"""The Ignite/MONAI ALM handler and the MONAI example on real MSD Hippocampus data.

The handler on a ``SupervisedEvaluator`` observes and steps exactly as calibrant's engine; the
example (``SupervisedTrainer`` + ``DynUNet`` + CRaC through ``MonaiTargets``) trains to bitwise
the same multipliers and weights as ``calibrant.engine.fit`` on the same patches and seed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

pytest.importorskip("monai")
pytest.importorskip("ignite")

from monai.engines import SupervisedEvaluator  # noqa: E402

import calibrant  # noqa: E402, F401  (registers)
from calibrant import LOSSES  # noqa: E402
from calibrant.alm import alm_terms  # noqa: E402
from calibrant.integrations import MonaiTargets  # noqa: E402
from calibrant.integrations.monai import ALMHandler  # noqa: E402
from tests.conftest import require_dataset  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IGNORE = -100


def _pair(generator, b=2, c=3, spatial=(6, 5)):
    logits = 2 * torch.randn(b, c, *spatial, generator=generator)
    labels = torch.randint(0, c, (b, *spatial), generator=generator)
    labels.view(-1)[::7] = IGNORE
    return logits, labels


# -- the Ignite/MONAI handler ---------------------------------------------------------------------
class _Fixed(torch.nn.Module):
    """Returns stored logits by batch position (a stand-in network for the handler test)."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()]


@pytest.mark.parametrize("decollate", [False, True])
def test_handler_observes_and_steps_like_the_engine(decollate, generator):
    logits, labels = _pair(generator, b=5, spatial=(6, 5))
    data = [
        {"image": torch.full((1, 6, 5), float(i)), "label": labels[i][None].float()}
        for i in range(5)
    ]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    crac = MonaiTargets(LOSSES.build("crac", num_classes=3))
    handler = ALMHandler(crac, class_names=["bg", "a", "b"])
    evaluator = SupervisedEvaluator(
        torch.device("cpu"), loader, _Fixed(logits.detach()), val_handlers=[handler],
        decollate=decollate,
    )  # fmt: skip
    ref = LOSSES.build("crac", num_classes=3)
    for epoch in (1, 2):
        evaluator.run(epoch)
        for i in range(0, 5, 2):
            alm_terms(ref)[0].observe(logits[i : i + 2].detach(), labels[i : i + 2])
        want = alm_terms(ref)[0].step()
        assert handler.records[-1] == {"alm": want}
    lam = alm_terms(crac)[0].lam
    assert evaluator.state.metrics["alm/lambda/boundary/b"] == float(lam[1, 2])
    assert evaluator.state.metrics["alm/rho/inner/bg"] == float(alm_terms(crac)[0].rho[0, 0])

    state = copy.deepcopy(handler.state_dict())
    other = ALMHandler(MonaiTargets(LOSSES.build("crac", num_classes=3)))
    other.load_state_dict(state)
    assert torch.equal(other.driver.terms[0].lam, lam)
    assert other.records == handler.records
    assert other.driver.terms[0].history() == alm_terms(crac)[0].history()


def test_handler_refuses_the_trainer():
    from monai.engines import SupervisedTrainer

    net = torch.nn.Conv2d(1, 3, 1)
    crac = MonaiTargets(LOSSES.build("crac", num_classes=3))
    trainer = SupervisedTrainer(
        torch.device("cpu"), 1, [], net, torch.optim.SGD(net.parameters(), lr=0.1), crac
    )
    with pytest.raises(ValueError, match="SupervisedEvaluator"):
        ALMHandler(crac).attach(trainer)


# -- the example on real data ---------------------------------------------------------------------
@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import monai_crac_hippocampus

    return monai_crac_hippocampus


def test_monai_example_multipliers_equal_the_engine(example, data_root):
    from calibrant.engine import EpochSampler, fit
    from calibrant.metrics import CalibrationError

    require_dataset(data_root, "msd_hippocampus")
    opts = dict(train_cases=4, val_cases=2, seed=0)
    net, crac, opt = example.build(filters=(4, 8, 16, 16), seed=0)
    engine_net, engine_crac = copy.deepcopy(net), copy.deepcopy(crac)
    train, val = example.hippocampus(data_root, **opts)
    _, evaluator, handler = example.run(net, crac, opt, train, val, epochs=2, batch_size=2)

    train, val = example.hippocampus(data_root, **opts)  # the same patch generator again
    loader = torch.utils.data.DataLoader(
        train, batch_size=2, sampler=EpochSampler(len(train), seed=0)
    )
    val_loader = torch.utils.data.DataLoader(val, batch_size=1)
    engine_opt = torch.optim.Adam(engine_net.parameters(), lr=2e-3)
    fit(
        engine_net, loader, val_loader, engine_crac, engine_opt,
        epochs=2, metrics={"ece": CalibrationError()}, select="ece", select_mode="min",
    )  # fmt: skip

    ours = alm_terms(crac)[0].history()
    assert len(ours) == 2 and ours == alm_terms(engine_crac)[0].history()  # bitwise
    assert [r["alm"] for r in handler.records] == ours
    for (k, a), b in zip(net.state_dict().items(), engine_net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert "alm/lambda/boundary/posterior" in evaluator.state.metrics
    assert "val_dice" in evaluator.state.metrics


def test_monai_example_main_runs(example, data_root, caplog):
    require_dataset(data_root, "msd_hippocampus")
    out = example.main(
        ["--data", str(data_root), "--epochs", "1", "--train-cases", "2", "--val-cases", "1"]
    )
    assert len(out["records"]) == 1
    assert "alm/rho/inner/anterior" in out["metrics"]
    assert "alm/lambda/inner/anterior" in caplog.text  # StatsHandler printed λ


# -- the README section ---------------------------------------------------------------------------
def _readme_blocks() -> list[str]:
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = re.search(r"^## Use it in your own training code\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no 'Use it in your own training code' section"
    return re.findall(r"```python\n(.*?)```", section.group(1), re.S)


def test_readme_integration_snippets_run(generator, tmp_path, monkeypatch):
    """The README's plain-PyTorch, Lightning and MONAI snippets run as written."""
    L = pytest.importorskip("lightning")
    from monai.engines import SupervisedEvaluator
    from monai.handlers import StatsHandler

    monkeypatch.chdir(tmp_path)  # the Trainer may create lightning_logs/
    plain, lit, monai_block = _readme_blocks()
    logits, labels = _pair(generator, b=4, c=4)
    images = torch.arange(4.0)[:, None, None, None].expand(4, 1, 6, 5)
    data = list(zip(images, labels, strict=True))
    val_loader = torch.utils.data.DataLoader(data, batch_size=2)
    env = {"model": lambda x: logits[x[:, 0, 0, 0].long()], "val_loader": val_loader}
    exec(plain, env)
    assert len(env["records"]) == 1 and len(env["records"][0]["lambda"]) == 2

    env = {"L": L, "LOSSES": LOSSES}
    exec(lit, env)
    assert any(type(c).__name__ == "ALMCallback" for c in env["trainer"].callbacks)

    _, labels3 = _pair(generator, b=4, c=3)  # the README's MONAI preset has 3 classes
    monai_data = [
        {"image": x, "label": y[None].float()} for x, y in zip(images, labels3, strict=True)
    ]
    env = {
        "LOSSES": LOSSES,
        "SupervisedEvaluator": SupervisedEvaluator,
        "StatsHandler": StatsHandler,
        "device": torch.device("cpu"),
        "val_loader": torch.utils.data.DataLoader(monai_data, batch_size=2),
        "net": torch.nn.Conv2d(1, 3, 1),
    }
    exec(monai_block, env)
    env["evaluator"].run()
    assert "alm/lambda/inner/class 0" in env["evaluator"].state.metrics
