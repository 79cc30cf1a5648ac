"""docs/adding_a_loss.md runs: its loss file registers, the harness picks it up, its test passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
PAGE = ROOT / "docs" / "adding_a_loss.md"
MODULE = "calibrant_example_boundary_ce"

_CONFTEST = """
import pytest
import torch


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
"""


def test_the_worked_example_registers_passes_the_harness_and_its_identity_test(tmp_path):
    loss_file, identity_test = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    (tmp_path / f"{MODULE}.py").write_text(loss_file)
    example = tmp_path / "example"
    example.mkdir()
    (example / "conftest.py").write_text(_CONFTEST)
    (example / "test_losses_boundary_ce.py").write_text(identity_test)
    # the checkout's calibrant (src/), not whichever one the environment has installed
    paths = [str(tmp_path), str(ROOT / "src"), str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", MODULE, "-p", "no:cacheprovider"]
    cmd += ["-p", "no:xdist", "-k", "boundary_ce", str(tmp_path / f"{MODULE}.py")]
    cmd += [str(ROOT / "tests" / "test_losses_harness.py"), str(example)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    passed = int(re.search(r"(\d+) passed", run.stdout).group(1))
    # the doctest, the identity test and the harness's cases for the new loss (1 to 3 spatial
    # dims for the shape, ignore and gradcheck tests, and the rest)
    assert passed >= 12, run.stdout[-2000:]
    assert re.search(
        r"PASSED \S*test_losses_boundary_ce.py::test_boundary_ce_with_zero", run.stdout
    )
    assert re.search(
        r"PASSED .*test_losses_harness.py::test_gradcheck_float64\[boundary_ce", run.stdout
    )
    assert re.search(rf"PASSED \S*::{MODULE}\n", run.stdout)  # the module's doctest
