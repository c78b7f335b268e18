"""Server settings (``QFLARE_`` environment prefix, or a TOML/JSON config file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from qflare.fl.robust import make_defence
from qflare.fl.strategy import build_strategy
from qflare.protocol.names import ProtocolName

TRAIN_STEPS = 3  # the training step's default deadline, in step timeouts


class ServerSettings(BaseSettings):
    """Everything the server reads at start-up; built once in the CLI and passed down.

    Attributes:
        database_url: SQLAlchemy URL; SQLite file by default, ``postgresql://…`` for PostgreSQL.
        state_dir: Server key and TLS material (created 0700).
        host: Bind address.
        port: Bind port.
        tls_cert: Server certificate (PEM); required unless ``insecure``.
        tls_key: Server private key (PEM).
        insecure: Serve plain HTTP (loudly warned; for tests on loopback only).
        dev: Development mode (allows default secrets).
        log_level: Level of the JSON-lines log on stderr (``debug``, ``info``, ``warning``,
            ``error``, ``critical``); the per-request access log is written only at ``debug``.
        signature_scheme: Identity scheme of the server and devices.
        protocol: ``secagg+`` (sparse Harary graph, finder's k and t), ``secagg`` (complete
            graph), ``enclave`` (nodes seal updates to an attested aggregation enclave, which
            releases one robust aggregate per round), or ``chronos`` / ``chronos-dm`` (epochs:
            offline setup once, then rounds).
        strategy: Server optimiser applied to each round's aggregate: ``fedavg`` (McMahan et
            al.), or ``fedadagrad`` / ``fedadam`` / ``fedyogi`` (Reddi et al.); the adaptive
            ones keep their moments in memory, so they start afresh after a server restart.
        strategy_params: The strategy's parameters: ``eta`` (all), ``beta1``, ``beta2``,
            ``tau`` (adaptive ones).
        chronos_rounds_per_epoch: Rounds of one CHRONOS epoch.
        chronos_keystores: ``enclave`` (default): only keystores in an attested enclave join
            CHRONOS epochs; ``software``: keystores in the node process are admitted too (no
            protection against the device OS; for tests and trials).
        attestation_roots: Root certificate files that platform attestation chains must end at.
        attestation_allow_simulated: Accept evidence from the *simulated* TEE backend.
        attestation_measurements: Extra accepted measurements (hex), beside the CHRONOS trusted
            application's reference measurement.
        enclave_min_accepted: Valid uploads an enclave round needs (also the floor in the
            aggregator enclave's configuration, so it is part of the measurement nodes pin).
        enclave_defence: Robust rule the aggregation enclave applies (``qflare.fl.robust``);
            ``centred-clip`` measured best across attacks on non-IID MNIST.
        enclave_defence_params: The defence's parameters (e.g. ``tau`` for ``centred-clip``).
        enclave_allow_simulated: Run the aggregation enclave on the *simulated* TEE backend (a
            simulated manufacturer under ``state_dir/enclave`` certifies it; nodes must allow
            simulated attestation). There is no hardware backend yet, so ``enclave`` needs it.
        model: Model architecture of the federation, or ``vector:D`` for a raw vector.
        dataset: Dataset the model is shaped for (``mnist`` or ``digits``).
        min_clients: Devices needed to open a round.
        max_clients: Devices sampled per round.
        k: SecAgg+ shares per client (``None``: parameter finder).
        t: Shamir threshold (``None``: parameter finder).
        dropout_estimate: Dropout fraction the finder plans for.
        corrupt_fraction: Fraction of a cohort assumed to collude with the server (the finder's
            privacy bound; nodes check the same bound with their own policy).
        seed_restarts: Restarts of a sparse graph's seed exchange before a round aborts.
        culprit_quarantine_rounds: Rounds a device named as a culprit is left out of.
        step_timeout_s: Deadline per protocol step; silent devices become dropouts.
        train_timeout_s: Deadline of the step in which nodes train (a round's first step;
            the first round also loads data and warms up: on a loaded 2-core machine the demo's
            MNIST shards need well over 30 s there). Default: three step timeouts (90 s).
        evaluate: Log each new global model's accuracy on the dataset's held-out test split
            (round event log; needs the ``fl`` extra; not for ``vector:D`` models).
        round_interval_s: Pause between rounds.
        max_rounds: Stop opening rounds after this many (0: no limit).
        clip: Quantisation clipping range.
        max_total_weight: Bound on summed example counts per round.
        session_lifetime_s: Lifetime of a session.
        max_sessions: Sessions kept in memory.
        long_poll_max_s: Longest wait of ``GET /v1/tasks``.
        max_long_polls: Concurrent long-polls allowed.
        rate_per_device: Authenticated requests (a live session's polls and results) per second
            per device (token bucket; also the burst).
        rate_per_ip: Anonymous requests (everything without a live session: enrollments,
            handshakes, public views, bad tokens) per second per client IP (token bucket; also
            the burst). Authenticated traffic never draws on it. Over budget: 429
            ``rate_limited`` with ``Retry-After``.
        body_limit_enroll: Bytes allowed in an enrollment body.
        body_limit_session: Bytes allowed in a handshake body.
        body_limit_results: Bytes allowed in a result body (``None``: sized from the model,
            ``4·d`` plus share and signature allowances for ``max_clients``). Only a request
            naming a live session in ``X-QFLARE-Session`` gets its result body read.
        body_timeout_s: Longest wait for the next chunk of a request body, and the grace of a
            whole body (408 ``body_timeout``).
        body_min_rate: Slowest accepted upload after the grace, in bytes per second: a body of
            ``n`` bytes must arrive within ``body_timeout_s + n / body_min_rate``.
        header_timeout_s: Time a connection gets to deliver a complete request head, from its
            opening or the end of the previous answer (then it is closed).
        keep_alive_s: Idle time after which a kept-alive connection is closed.
        max_header_bytes: Largest request head (request line and headers) accepted.
        max_unauthenticated: Unauthenticated connections in progress at once, in all: those
            still owing a request head and those running an anonymous request (503
            ``too_many_unauthenticated`` beyond, or the connection is closed).
        max_unauthenticated_per_ip: The same, per client IP.
        authority_url: Base URL of the enrollment authority (``qflare authority serve``); the
            server relays enrollments there. Without it (and ``authority_key``) enrollment is off.
        authority_key: The authority's public key file (``authority.pub``), pinned: a token or
            certificate it did not sign is refused. Never the authority's private key.
        authority_ca: CA certificate (PEM) for an ``https://`` authority URL (system roots if
            unset).
        authority_timeout_s: How long to wait for the authority before answering 503.
        witness_urls: Base URLs of the ledger witnesses (none: heads are signed, not cosigned).
        witness_keys: Their public key files (``qflare witness init``), in the same order.
        witness_quorum: Cosignatures a head needs before it is served (default: every witness).
        witness_timeout_s: Timeout of one request to a witness.
        witness_interval_s: How often the server looks for ledger growth to get cosigned.
    """

    model_config = SettingsConfigDict(env_prefix="QFLARE_", extra="ignore")

    database_url: str = "sqlite:///qflare-server.db"
    state_dir: Path = Path("qflare-server")
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    dev: bool = False
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    signature_scheme: str = "mldsa65"
    protocol: ProtocolName = ProtocolName.SECAGG_PLUS
    strategy: Literal["fedavg", "fedadagrad", "fedadam", "fedyogi"] = "fedavg"
    strategy_params: dict[str, float] = Field(default_factory=dict)
    chronos_rounds_per_epoch: int = Field(default=10, ge=1)
    chronos_keystores: Literal["enclave", "software"] = "enclave"
    attestation_roots: list[Path] = []
    attestation_allow_simulated: bool = False
    attestation_measurements: list[str] = []
    enclave_min_accepted: int = Field(default=2, ge=1)
    enclave_defence: str = "centred-clip"
    enclave_defence_params: dict[str, float] = Field(default_factory=dict)
    enclave_allow_simulated: bool = False
    model: str | None = None
    dataset: str = "mnist"
    min_clients: int = Field(default=3, ge=1)
    max_clients: int = Field(default=100, ge=1)
    k: int | None = None
    t: int | None = None
    dropout_estimate: float = Field(default=0.1, ge=0, lt=1)
    corrupt_fraction: float = Field(default=0.05, ge=0, lt=0.5)
    seed_restarts: int = Field(default=2, ge=0, le=16)
    culprit_quarantine_rounds: int = Field(default=5, ge=0)
    step_timeout_s: float = Field(default=30.0, gt=0)
    train_timeout_s: float | None = Field(default=None, gt=0)
    evaluate: bool = False
    round_interval_s: float = Field(default=1.0, ge=0)
    max_rounds: int = Field(default=0, ge=0)
    clip: float = 1.0
    max_total_weight: int = 10_000
    session_lifetime_s: float = 3600.0
    max_sessions: int = 10_000
    long_poll_max_s: float = 20.0
    max_long_polls: int = 1_000
    rate_per_device: float = Field(default=50.0, gt=0)
    rate_per_ip: float = Field(default=500.0, gt=0)
    body_limit_enroll: int = 16_384
    body_limit_session: int = 16_384
    body_limit_results: int | None = Field(default=None, ge=1024)
    # ---- abuse of the HTTP server (issue 15) ----
    body_timeout_s: float = Field(default=10.0, gt=0)
    body_min_rate: float = Field(default=64 * 1024, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    keep_alive_s: int = Field(default=5, ge=1)
    max_header_bytes: int = Field(default=16_384, ge=1024)
    max_unauthenticated: int = Field(default=1024, ge=1)
    max_unauthenticated_per_ip: int = Field(default=128, ge=1)
    authority_url: str | None = None
    authority_key: Path | None = None
    authority_ca: Path | None = None
    authority_timeout_s: float = Field(default=10.0, gt=0)
    witness_urls: list[str] = Field(default_factory=list)
    witness_keys: list[Path] = Field(default_factory=list)
    witness_quorum: int | None = None
    witness_timeout_s: float = Field(default=5.0, gt=0)
    witness_interval_s: float = Field(default=1.0, gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def training_timeout_s(self) -> float:
        """The deadline of the training step (``train_timeout_s`` or its default)."""
        return self.train_timeout_s or TRAIN_STEPS * self.step_timeout_s

    @model_validator(mode="after")
    def _check_strategy(self) -> ServerSettings:
        build_strategy(self.strategy, self.strategy_params)  # ValueError: a wrong parameter
        return self

    @model_validator(mode="after")
    def _check_defence(self) -> ServerSettings:
        make_defence(self.enclave_defence, **self.enclave_defence_params)  # ValueError: unknown
        return self

    @model_validator(mode="after")
    def _check_witnesses(self) -> ServerSettings:
        if len(self.witness_urls) != len(self.witness_keys):
            raise ValueError(
                f"{len(self.witness_urls)} witness_urls but {len(self.witness_keys)} "
                "witness_keys: give one public key file per witness, in the same order"
            )
        quorum = self.witness_quorum
        if quorum is not None and not 1 <= quorum <= len(self.witness_urls):
            raise ValueError(f"witness_quorum must lie in 1..{len(self.witness_urls)}")
        return self
