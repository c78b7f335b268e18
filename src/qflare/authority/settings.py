"""Authority settings (``QFLARE_AUTHORITY_`` environment prefix), built once by the CLI."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AuthoritySettings"]


class AuthoritySettings(BaseSettings):
    """Everything ``qflare authority`` reads.

    Attributes:
        dir: Holds ``authority.key`` (0600), ``authority.pub`` and the authority's database.
        database_url: SQLAlchemy URL (default: ``authority.sqlite`` in ``dir``). Never the
            server's database.
        host: Bind address of ``qflare authority serve``.
        port: Bind port.
        max_token_ttl_s: Longest token lifetime.
        body_limit: Bytes allowed in a certificate request.
    """

    model_config = SettingsConfigDict(env_prefix="QFLARE_AUTHORITY_", extra="ignore")

    dir: Path = Path("qflare-authority")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8444, ge=0, le=65535)
    max_token_ttl_s: float = Field(default=30 * 86_400.0, gt=0)
    body_limit: int = Field(default=16_384, ge=1024)

    @property
    def db_url(self) -> str:
        """The database URL to open."""
        return self.database_url or f"sqlite:///{self.dir / 'authority.sqlite'}"
