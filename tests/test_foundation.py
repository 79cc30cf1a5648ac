import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import calibrant
from calibrant._checks import check_labels_in_range, check_logits_target
from calibrant._tensor import boundary_mask, neighbor_proportions, reduce, valid_mask
from calibrant.registry import SUITES, Registry


def test_registry_close_match_and_meta():
    reg = Registry("thing")
    reg.register("alpha", task="a")(lambda: 1)
    reg.register("beta", task="b")(lambda: 2)
    assert reg.names(task="a") == ["alpha"]
    with pytest.raises(KeyError, match="did you mean 'alpha'"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(lambda: 3)


def test_version():
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    declared = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.MULTILINE)
    assert declared and calibrant.__version__ == declared.group(1)


def test_the_public_import_does_not_load_the_benchmarks():
    code = "import sys, calibrant; print('calibrant.bench' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    # the suites load on their first lookup

    assert "crac-acdc" in SUITES.names()


def test_checks_messages():
    with pytest.raises(ValueError, match="floating-point"):
        check_logits_target(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        check_logits_target(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="num_classes=4"):
        check_logits_target(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), num_classes=4)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        check_labels_in_range(torch.tensor([0, 3, -100]), 3, ignore_index=-100)
    check_labels_in_range(torch.tensor([0, 2, -100]), 3, ignore_index=-100)


def test_reduce_mean_over_valid_only():
    target = torch.tensor([[0, 1, -100, 2]])
    safe, mask = valid_mask(target, -100)
    assert safe.tolist() == [[0, 1, 0, 2]]
    values = torch.tensor([[1.0, 2.0, float("nan"), 3.0]])
    assert reduce(values, mask, "mean").item() == pytest.approx(2.0)
    assert reduce(values, mask, "sum").item() == pytest.approx(6.0)
    assert reduce(values, mask, "none")[0, 2].item() == 0.0
    empty = torch.zeros(1, 4, dtype=torch.bool)
    assert reduce(values, empty, "mean").item() == 0.0


def _slow_proportions(y, num_classes, k, padding):
    """Loop reference for the window class proportions (2D)."""
    b, h, w = y.shape
    r = k // 2
    out = torch.zeros(b, num_classes, h, w)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for di in range(-r, r + 1):
                    for dj in range(-r, r + 1):
                        ii, jj = i + di, j + dj
                        inside = 0 <= ii < h and 0 <= jj < w
                        if not inside and padding == "zeros":
                            continue
                        if not inside and padding == "label0":
                            lab = 0
                        else:
                            lab = int(y[n, min(max(ii, 0), h - 1), min(max(jj, 0), w - 1)])
                        out[n, lab, i, j] += 1.0 / k**2
    return out


@pytest.mark.parametrize("padding", ["label0", "zeros", "replicate"])
@pytest.mark.parametrize("k", [3, 5])
def test_neighbor_proportions_matches_loops(padding, k, generator):
    y = torch.randint(0, 3, (2, 6, 7), generator=generator)
    got = neighbor_proportions(y, 3, kernel_size=k, padding=padding)
    torch.testing.assert_close(got, _slow_proportions(y, 3, k, padding))
    if padding != "zeros":
        torch.testing.assert_close(got.sum(1), torch.ones(2, 6, 7))


def test_neighbor_proportions_renormalises_ignored(generator):
    y = torch.randint(0, 3, (1, 5, 5), generator=generator)
    y[0, 2, 2] = -100
    tau = neighbor_proportions(y, 3, ignore_index=-100)
    assert tau[0, :, 2, 2].abs().sum() == 0  # ignored centre
    torch.testing.assert_close(tau[0, :, 1, 1].sum(), torch.tensor(1.0))


def test_neighbor_proportions_3d(generator):
    y = torch.randint(0, 2, (1, 4, 4, 4), generator=generator)
    tau = neighbor_proportions(y, 2)
    assert tau.shape == (1, 2, 4, 4, 4)
    torch.testing.assert_close(tau.sum(1), torch.ones(1, 4, 4, 4))


def test_boundary_mask_exhaustive_3x3_patches():
    """Every 3x3 patch over 4 labels: centre is boundary iff the patch has >= 2 labels."""
    codes = torch.arange(4**9)
    digits = torch.stack([(codes // 4**i) % 4 for i in range(9)], dim=1)
    patches = digits.view(-1, 3, 3)
    got = boundary_mask(patches)[:, 1, 1]
    expected = torch.tensor([len(set(p.tolist())) > 1 for p in digits])
    assert torch.equal(got, expected)
