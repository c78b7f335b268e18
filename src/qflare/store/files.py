"""Small state files written so that a crash leaves either the old or the new content.

:func:`write_atomic` writes a temporary file in the same directory, fsyncs it, renames it over the
target and fsyncs the directory: a reader (or a process restarted after a power cut) sees the old
file or the new one, never a torn mix. Witnesses rely on this to persist the last head they
cosigned *before* handing the cosignature out.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Args:
        path: The target file (its directory must exist).
        data: New content.
        mode: Permissions of the new file (not widened by the umask).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
