"""Settings built once at the entry point (``QFLARE_`` environment prefix) and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from qflare.cli.options import PROTOCOLS

__all__ = ["PROTOCOLS", "Settings"]


class Settings(BaseSettings):
    """QFLARE settings; every field can be set as ``QFLARE_<NAME>``.

    Attributes:
        out_dir: Where demos and benchmarks write results.
        signature_scheme: Identity signatures: mldsa65, ed25519 or hybrid.
        log_level: Logging level name.
    """

    model_config = SettingsConfigDict(env_prefix="QFLARE_", env_file=None, extra="ignore")

    out_dir: Path = Path("out")
    signature_scheme: str = "mldsa65"
    log_level: str = "WARNING"
