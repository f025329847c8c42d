"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on a clean exit it is renamed onto ``path``, on an
    error removed. Readers see the old file or the whole new one, never a part. The file gets the umask's mode.

    The temporary name is ``.<name>.<pid>-<thread>.tmp`` in the same folder (created if missing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
