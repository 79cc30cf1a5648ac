"""The architecture map (docs/architecture.md) matches the import contract that CI enforces."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _contract_layers() -> list[set[str]]:
    text = (ROOT / "pyproject.toml").read_text()
    block = text[text.index('type = "layers"') :]
    block = block[block.index("layers = [") :]
    block = block[: block.index("]")]
    return [set(re.split(r"\s*[|:]\s*", m)) for m in re.findall(r'"([^"]+)"', block)]


def _documented_layers() -> list[set[str]]:
    rows = []
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0].isdigit():
            names = cells[1].replace("\\|", "|").strip("`")
            rows.append((int(cells[0]), set(re.split(r"\s*[|:]\s*", names))))
    return [names for _, names in sorted(rows, reverse=True)]


def test_the_map_lists_the_contract_layers_in_order():
    assert _documented_layers() == _contract_layers()


def test_every_top_level_module_has_a_layer():
    placed = set().union(*_contract_layers())
    package = ROOT / "src" / "calibrant"
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    modules |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert modules <= placed, sorted(modules - placed)
