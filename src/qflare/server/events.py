"""The round event log: one structured line per thing an operator follows a federation by.

Lines go to the ``qflare.server.rounds`` logger with their fields in ``extra`` (the JSON
formatter writes them as keys): ``round opened``, ``step closed``, ``device excluded`` (with its
reason), ``round completed`` / ``round aborted`` (with the test accuracy when the server
evaluates models), ``round abandoned`` (a database write failed) and the store's ``database
unavailable`` / ``database writable again``. Nothing here holds keys, shares or updates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

__all__ = [
    "device_excluded",
    "excluded_since",
    "log",
    "round_closed",
    "round_opened",
    "step_closed",
]

log = logging.getLogger("qflare.server.rounds")


def round_opened(
    round_id: int, devices: int, k: int, t: int, model_version: int, deadline_s: float
) -> None:
    """A round was opened with ``devices`` sampled nodes."""
    log.info(
        "round opened",
        extra={
            "round": round_id,
            "devices": devices,
            "k": k,
            "t": t,
            "model_version": model_version,
            "deadline_s": round(deadline_s, 3),
        },
    )


def step_closed(round_id: int, step: int, state: str, next_state: str, continuing: int) -> None:
    """Step ``step`` (in protocol state ``state``) closed; ``continuing`` clients go on."""
    log.info(
        "step closed",
        extra={
            "round": round_id,
            "step": step,
            "state": state,
            "next_state": next_state,
            "continuing": continuing,
        },
    )


def device_excluded(round_id: int, index: int, device: str, reason: str) -> None:
    """A device no longer takes part in the round (dropped, refused, left, misbehaved)."""
    log.warning(
        "device excluded",
        extra={"round": round_id, "client": index, "device": device, "reason": reason[:200]},
    )


def excluded_since(
    round_id: int,
    before: Mapping[int, str],
    after: Mapping[int, str],
    devices: Mapping[int, str],
) -> None:
    """Log every client in ``after`` that is not in ``before`` (with the machine's reason)."""
    for index in sorted(set(after) - set(before)):
        device_excluded(round_id, index, devices.get(index, "?"), after[index])


def round_closed(
    round_id: int,
    state: str,
    *,
    survivors: Iterable[int],
    model_version: int | None,
    abort: str | None,
    accuracy: float | None = None,
) -> None:
    """A round ended: completed (with the new model version) or aborted (with the reason)."""
    fields: dict[str, object] = {
        "round": round_id,
        "state": state,
        "survivors": len(tuple(survivors)),
        "model_version": model_version,
    }
    if abort is not None:
        fields["abort"] = abort[:200]
    if accuracy is not None:
        fields["accuracy"] = round(accuracy, 4)
    message = "round completed" if abort is None else "round aborted"
    (log.info if abort is None else log.warning)(message, extra=fields)
