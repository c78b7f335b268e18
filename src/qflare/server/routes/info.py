"""Public read-only views: health, rounds, the model (the ledger is in ``routes.ledger``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import APIRouter, Path

from qflare.server.errors import ApiError, problem_responses
from qflare.server.routes.deps import CtxDep
from qflare.store import repos
from qflare.store.models import Round

router = APIRouter(prefix="/v1", tags=["info"])


def _round_view(row: Round) -> dict[str, Any]:
    return {
        "id": row.id,
        "state": row.state,
        "devices": len(json.loads(row.devices)),
        "model_version": row.model_version,
        "opened_at": row.opened_at,
        "closed_at": row.closed_at,
        "abort_reason": row.abort_reason,
        "result_sha256": hashlib.sha256(row.result).hexdigest() if row.result is not None else None,
        "survivors": json.loads(row.survivors) if row.survivors else None,
        "culprits": json.loads(row.culprits) if row.culprits else None,
    }


@router.get("/health", responses=problem_responses())
def health(ctx: CtxDep) -> dict[str, Any]:
    """Liveness and the server's identity key fingerprint."""
    return {
        "status": "ok",
        "server_key_sha256": hashlib.sha256(ctx.identity.public_key).hexdigest(),
    }


@router.get("/rounds", responses=problem_responses())
def list_rounds(ctx: CtxDep) -> list[dict[str, Any]]:
    """The 100 most recent rounds."""
    with ctx.factory() as db:
        return [_round_view(r) for r in repos.rounds(db)]


@router.get("/rounds/{round_id}", responses=problem_responses(404, 422))
def get_round(ctx: CtxDep, round_id: int = Path(ge=1, le=2**62)) -> dict[str, Any]:
    """One round."""
    with ctx.factory() as db:
        row = db.get(Round, round_id)
        if row is None:
            raise ApiError(404, "round_unknown", "no such round")
        return _round_view(row)


@router.get("/model", responses=problem_responses())
def model_info(ctx: CtxDep) -> dict[str, Any]:
    """Version, size and hash of the current global model."""
    version, weights = ctx.models.latest()
    return {
        "version": version,
        "parameters": int(weights.size),
        "sha256": hashlib.sha256(weights.tobytes()).hexdigest(),
    }
