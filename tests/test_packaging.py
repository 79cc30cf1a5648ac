"""The package as users get it: ``python -m build``, then the wheel in a fresh virtual environment.

The wheel is installed into a scratch venv that holds nothing but calibrant's runtime
dependencies, and the checks run there: ``import calibrant`` and its subpackages, ``pip check``
(the wheel's metadata is satisfied by exactly those packages), ``calibrant --version``, the
packaged configs, and a clear message naming the extra when an optional one is missing.

Offline by default: the runtime dependencies' closure is read from the wheel's own metadata and
the installed distributions are linked into the scratch venv from this test's environment (no
index, no download; the wheel itself goes in with ``pip install --no-index --no-deps``). With
``CALIBRANT_WHEEL_FULL_INSTALL=1`` the scratch venv instead gets ``pip install torch==<this
torch>`` and then the wheel with its dependencies resolved by pip from the package index.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FULL = os.environ.get("CALIBRANT_WHEEL_FULL_INSTALL") == "1"
OPTIONAL = ("matplotlib", "h5py", "nibabel", "sklearn", "PIL", "monai", "lightning", "tensorboard")


def _run(cmd, *, check=True, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel from ``python -m build`` (no isolation: offline, this env's setuptools)."""
    pytest.importorskip("build")
    out, tree = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("tree")
    # build from a copy: the build writes build/ and *.egg-info next to the sources
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", tree / "src", ignore=skip)
    res = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)])
    log = res.stdout + res.stderr
    assert "license` as a TOML table is deprecated" not in log
    assert "License classifiers are deprecated" not in log
    return out


def _runtime_requirements() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.mark.slow
def test_sdist_and_wheel_contents(dist):
    (sdist,) = dist.glob("calibrant-*.tar.gz")
    (wheel,) = dist.glob("calibrant-*-py3-none-any.whl")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "LICENSE", "src/calibrant/__init__.py"} <= names
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    assert "calibrant/configs/acdc_crac.yaml" in names  # package data
    assert "calibrant/integrations/lightning.py" in names
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta  # SPDX (PEP 639)
    requires = [
        line.split(": ", 1)[1] for line in meta.splitlines() if line.startswith("Requires-Dist")
    ]
    runtime = [r for r in requires if "extra ==" not in r]
    assert sorted(runtime) == sorted(_runtime_requirements())
    for extra in ("cli", "monai", "lightning", "test"):
        assert f"Provides-Extra: {extra}" in meta


def _closure(requirements: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions that ``requirements`` pull in (markers evaluated, no extras)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, md.Distribution] = {}
    todo = list(requirements)
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in found:
            continue
        found[name] = md.distribution(req.name)
        todo += found[name].requires or []
    return found


def _link_distributions(dists: dict[str, md.Distribution], site: Path) -> None:
    for dist in dists.values():
        if dist.files is None:
            pytest.fail(f"{dist.metadata['Name']} has no RECORD; cannot link it")
        tops = {f.parts[0] for f in dist.files if f.parts and f.parts[0] != ".."}
        for top in tops:
            target = site / top
            if not target.exists():
                target.symlink_to(Path(dist.locate_file(top)).resolve())


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh venv with the wheel and only the runtime dependencies; returns its bin/."""
    (wheel,) = dist.glob("calibrant-*.whl")
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", str(root)])
    py = root / "bin" / "python"
    if FULL:
        import torch

        torch_version = torch.__version__.split("+")[0]
        _run([str(py), "-m", "pip", "install", "--quiet", f"torch=={torch_version}"])
        _run([str(py), "-m", "pip", "install", "--quiet", str(wheel)])
    else:
        site = Path(
            _run(
                [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
            ).stdout.strip()
        )
        _link_distributions(_closure(_runtime_requirements()), site)
        _run([str(py), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", str(wheel)])
    return root / "bin"


@pytest.mark.slow
def test_wheel_installs_and_imports_with_runtime_dependencies_only(venv):
    py = str(venv / "python")
    check = _run([py, "-m", "pip", "check"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr  # metadata satisfied
    code = (
        "import importlib.util as u, calibrant, calibrant.losses, calibrant.metrics, "
        "calibrant.alm, calibrant.posthoc, calibrant.engine, calibrant.models, calibrant.data, "
        "calibrant.integrations, calibrant.cli, calibrant.experiment, calibrant.report\n"
        f"missing = [m for m in {OPTIONAL!r} if u.find_spec(m) is None]\n"
        "print(calibrant.__file__); print(sorted(missing))\n"
        "from calibrant import LOSSES\n"
        "import torch\n"
        "crac = LOSSES.build('crac', num_classes=3)\n"
        "print(float(crac(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))))"
    )
    out = _run([py, "-c", code], cwd=venv).stdout.splitlines()
    assert "site-packages" in out[0] and str(ROOT) not in out[0]  # the installed copy
    if not FULL:
        assert out[1] == repr(sorted(OPTIONAL))  # none of the optional packages is there


@pytest.mark.slow
def test_version_and_packaged_configs(venv):
    out = _run([str(venv / "calibrant"), "--version"]).stdout.strip()
    assert out == f"calibrant {md.version('calibrant')}"
    assert "acdc_crac" in _run([str(venv / "calibrant"), "list", "configs"]).stdout


@pytest.mark.slow
def test_missing_extra_is_named(venv, tmp_path):
    if FULL:
        pytest.skip("the full install may bring optional packages through other dependencies")
    res = _run(
        [str(venv / "calibrant"), "train", "acdc_ce", "--out", str(tmp_path / "run")],
        check=False,
        cwd=tmp_path,
    )
    assert res.returncode == 2
    assert "pip install 'calibrant[cli]'" in res.stderr and "Traceback" not in res.stderr
    assert "matplotlib" in res.stderr
    assert not (tmp_path / "run").exists()
    res = _run([str(venv / "python"), "-c", "import calibrant.integrations.lightning"], check=False)
    assert "pip install 'calibrant[lightning]'" in res.stderr
    res = _run([str(venv / "python"), "-c", "import calibrant.integrations.monai"], check=False)
    assert "pip install 'calibrant[monai]'" in res.stderr


# -- quick checks in this environment ---------------------------------------------------------
def test_cli_version(capsys):
    from calibrant.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"calibrant {md.version('calibrant')}"


def test_cli_names_the_missing_extra(monkeypatch, tmp_path, capsys):
    from calibrant import _extras
    from calibrant.cli import main

    monkeypatch.setattr(_extras, "missing_from_extra", lambda extra: ["h5py", "tensorboard"])
    assert main(["train", "acdc_ce", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "h5py, tensorboard" in err and "pip install 'calibrant[cli]'" in err
    assert not (tmp_path / "run").exists()


def test_import_errors_name_their_extra():
    from calibrant._extras import explain_import_error

    for module, extra in (("h5py", "cli"), ("sklearn.svm", "cli"), ("ignite.engine", "monai")):
        message = explain_import_error(ModuleNotFoundError("x", name=module))
        assert f"pip install 'calibrant[{extra}]'" in message
    assert explain_import_error(ModuleNotFoundError("x", name="numpy")) is None
