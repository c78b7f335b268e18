"""Fixtures for the fault tests: a live production-config server (:mod:`tests.faults.live`) and
real file-system faults (:mod:`tests.faults.mounts`)."""

from tests.faults.live import live_factory
from tests.faults.mounts import ext4_dir, small_tmpfs
from tests.server.conftest import database_url, postgres_url

__all__ = ["database_url", "ext4_dir", "live_factory", "postgres_url", "small_tmpfs"]
