"""Reading the JSON files calibrant writes (run configs, records) with an error that names them.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from calibrant._files import read_json
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d) / "a.json"
    ...     _ = path.write_text("{oops")
    ...     try:
    ...         read_json(path, what="corrupt record")
    ...     except ValueError as e:
    ...         print(str(e).split(":")[0].startswith("corrupt record"))
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_json"]


def read_json(
    path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "cannot parse"
) -> Any:
    """The content of the JSON file ``path``.

    Raises:
        error: ``f"{what} {path!r}: {reason}"`` (chained to the decoding error) when the file is
            not valid JSON. A missing file raises :class:`FileNotFoundError` as usual.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{what} {str(path)!r}: {e}") from e
