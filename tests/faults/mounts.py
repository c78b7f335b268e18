"""Real file-system faults for database tests: a small tmpfs (a disk that fills up) and a small
loop-mounted ext4 (whose files ``chattr +i`` makes read-only even for root). Both need root and
mounts; without them the tests skip and say why. Every mount is removed afterwards."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _mount(*args: str) -> str | None:
    """Run ``mount``; the error text if it failed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root and mount(8)"
    out = _run("mount", *args)
    return None if out.returncode == 0 else (out.stderr.strip() or "mount failed")


def _umount(path: Path) -> None:
    for _ in range(10):
        if _run("umount", str(path)).returncode == 0:
            return
        gc.collect()  # a database connection nobody closed still holds a file
        time.sleep(0.1)
    _run("umount", "-l", str(path))


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: a disk that a filler file can fill."""
    target = tmp_path / "tmpfs"
    target.mkdir()
    error = _mount("-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(target))
    if error is not None:
        pytest.skip(f"cannot mount a tmpfs: {error}")
    yield target
    _umount(target)


@pytest.fixture
def ext4_dir(tmp_path: Path) -> Iterator[Path]:
    """A loop-mounted 16 MiB ext4 file system (supports ``chattr +i``)."""
    image, target = tmp_path / "ext4.img", tmp_path / "ext4"
    target.mkdir()
    with image.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    if shutil.which("mkfs.ext4") is None or shutil.which("chattr") is None:
        pytest.skip("needs mkfs.ext4 and chattr")
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    error = _mount("-o", "loop", str(image), str(target))
    if error is not None:
        pytest.skip(f"cannot loop-mount an ext4 image: {error}")
    yield target
    for path in target.rglob("*"):
        _run("chattr", "-i", str(path))
    _umount(target)


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make files read-only for everyone, root included (``chattr +i``), for the block."""
    present = [str(p) for p in paths if p.exists()]
    out = _run("chattr", "+i", *present)
    assert out.returncode == 0, out.stderr
    try:
        yield
    finally:
        _run("chattr", "-i", *present)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; return the filler file."""
    filler = directory / "filler"
    block = b"\0" * 65536
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(block)
            f.flush()
    with contextlib.suppress(OSError), filler.open("ab") as f:  # the last partial block
        while True:
            f.write(b"\0" * 512)
            f.flush()
    return filler
