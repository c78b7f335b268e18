"""A trusted application defined outside ``qflare``: proves third-party TAs register and run.

The enclave process imports it as ``tests.tee.probe_ta`` (the host passes its ``sys.path`` on).
"""

from __future__ import annotations

import time

import msgspec

from qflare.tee.ta import Command, CommandTable, TaContext, TaManifest

SECRET_MESSAGE = "the enclave's secret is 0xDEADBEEF"


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    data: bytes = b""
    version: int = 1


class ProbeResult(msgspec.Struct, frozen=True, kw_only=True):
    data: bytes
    counter: int = 0
    version: int = 1


ECHO_CONFIG = Command(1, "echo-config", Probe, ProbeResult)
FAIL = Command(2, "fail", Probe, ProbeResult)
SEALED_STATE = Command(3, "sealed-state", Probe, ProbeResult)
WRONG_TYPE = Command(4, "wrong-type", Probe, ProbeResult)
HANG = Command(5, "hang", Probe, ProbeResult)
PROBE = TaManifest(
    name="tests.probe",
    version=3,
    module="tests.tee.probe_ta",
    commands=(ECHO_CONFIG, FAIL, SEALED_STATE, WRONG_TYPE, HANG),
)


class _State:
    def __init__(self, ctx: TaContext) -> None:
        self.ctx = ctx
        self.blob = b""

    def echo_config(self, params: Probe) -> ProbeResult:
        return ProbeResult(data=self.ctx.config + self.ctx.measurement)

    def fail(self, params: Probe) -> ProbeResult:
        raise RuntimeError(SECRET_MESSAGE)

    def sealed_state(self, params: Probe) -> ProbeResult:
        """Append ``data`` to TA-sealed state, bump a counter, return the state's length."""
        old = self.ctx.unseal(self.blob, label="state").reveal() if self.blob else b""
        self.blob = self.ctx.seal(old + params.data, label="state")
        step = self.ctx.counter_advance("steps", self.ctx.counter_read("steps") + 1)
        return ProbeResult(data=len(old + params.data).to_bytes(4, "big"), counter=step)

    def wrong_type(self, params: Probe) -> ProbeResult:
        return Probe()  # type: ignore[return-value]


def hang(params: Probe) -> ProbeResult:
    time.sleep(30)
    return ProbeResult(data=b"")


def build(ctx: TaContext) -> CommandTable:
    state = _State(ctx)
    table = CommandTable(PROBE)
    table.register(ECHO_CONFIG, state.echo_config)
    table.register(FAIL, state.fail)
    table.register(SEALED_STATE, state.sealed_state)
    table.register(WRONG_TYPE, state.wrong_type)
    table.register(HANG, hang)
    return table
