"""Measurement of a trusted application: SHA-256 over its identity, code and configuration.

On OP-TEE the measurement is the hash of the signed TA binary; on SGX it is MRENCLAVE. The
simulation hashes the *source files* that run inside the enclave process: the TA's module, the
modules it lists as measured, the enclave runtime and ``qflare.crypto``. A verifier recomputes
the same value from the same sources to obtain its reference value.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from qflare.tee.ta import TaManifest

MEASUREMENT_BYTES = 32
RUNTIME_MODULES = (
    "qflare.crypto",
    "qflare.tee.errors",
    "qflare.tee.interface",
    "qflare.tee.ta",
    "qflare.tee.wire",
    "qflare.tee.storage",
    "qflare.tee.rpmb",
    "qflare.tee.sealing",
    "qflare.tee.measurement",
    "qflare.tee.certs",
    "qflare.tee.attestation",
    "qflare.tee.runtime",
    "qflare.tee.enclave_main",
)
_DOMAIN = b"qflare/tee/measurement/v1"


def module_sources(name: str) -> list[tuple[str, bytes]]:
    """Source files of module ``name``; every ``.py`` file below it if it is a package.

    Raises:
        ModuleNotFoundError: ``name`` cannot be found.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"cannot measure {name}: not found")
    origin = Path(spec.origin)
    if spec.submodule_search_locations is None:
        return [(name, origin.read_bytes())]
    files = sorted(origin.parent.rglob("*.py"))
    return [(f"{name}:{p.relative_to(origin.parent).as_posix()}", p.read_bytes()) for p in files]


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def compute_measurement(
    *,
    name: str,
    version: int,
    module: str,
    measured_modules: tuple[str, ...] = (),
    config: bytes = b"",
) -> bytes:
    """Measurement from a TA's identity strings, its source files and its configuration."""
    digest = hashlib.sha256(_DOMAIN)
    for part in (name.encode(), str(version).encode(), module.encode()):
        digest.update(_lp(part))
    names = sorted({module, *measured_modules}) + list(RUNTIME_MODULES)
    for mod in names:
        for source_name, source in module_sources(mod):
            digest.update(_lp(source_name.encode()) + _lp(source))
    digest.update(_lp(config))
    return digest.digest()


def reference_measurement(manifest: TaManifest, config: bytes = b"") -> bytes:
    """The measurement a correct enclave running ``manifest`` with ``config`` reports."""
    return compute_measurement(
        name=manifest.name,
        version=manifest.version,
        module=manifest.module,
        measured_modules=manifest.measured_modules,
        config=config,
    )
