"""Where calibrant finds data: an explicit argument, else the ``CALIBRANT_DATA`` setting.

Example:
    >>> import os, tempfile
    >>> from calibrant._paths import data_root
    >>> with tempfile.TemporaryDirectory() as d:
    ...     data_root(d) == __import__("pathlib").Path(d)
    True
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "data_root"]

DATA_ENV = "CALIBRANT_DATA"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: ``root`` if given, else ``$CALIBRANT_DATA``.

    Raises:
        FileNotFoundError: naming the setting and the path when no existing folder is found.
    """
    if root is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise FileNotFoundError(
                f"no data root: pass one explicitly (--data-root) or set {DATA_ENV} to the folder "
                "holding acdc/, msd_hippocampus/, mulan/, 20newsgroups/, cifar10_jpg/"
            )
        root = env
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data root {str(path)!r} does not exist or is not a folder")
    return path
