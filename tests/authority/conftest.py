from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.authority.helpers import TestAuthority, make_authority


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[TestAuthority]:
    auth = make_authority(tmp_path / "authority")
    yield auth
    auth.close()
