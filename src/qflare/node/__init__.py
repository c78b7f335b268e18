"""The edge node: enrollment, the PQ session transport, local training, the round runner."""

from qflare.node.enroll import (
    AlreadyEnrolledError,
    EnrollmentRejectedError,
    InvalidTokenError,
    enroll,
)
from qflare.node.runner import NodeRunner, RunReport
from qflare.node.session import (
    NodeFatalError,
    NodeSession,
    NodeStopped,
    RetryPolicy,
    SessionLostError,
    TaskTransport,
)
from qflare.node.state import (
    DeviceRecord,
    InsecureKeyFileError,
    NodeState,
    PersistentRoundRegistry,
    StateError,
)
from qflare.node.trainer import ConstantTrainer, TorchTrainer, Trainer, TrainingConfig
from qflare.node.transport import (
    ConflictError,
    ForbiddenError,
    HttpApi,
    MalformedResponseError,
    NetworkError,
    RateLimitedError,
    ServerError,
    ServerUnavailableError,
    Timeouts,
    TransportError,
    UnauthorizedError,
)

__all__ = [
    "AlreadyEnrolledError",
    "ConflictError",
    "ConstantTrainer",
    "DeviceRecord",
    "EnrollmentRejectedError",
    "ForbiddenError",
    "HttpApi",
    "InsecureKeyFileError",
    "InvalidTokenError",
    "MalformedResponseError",
    "NetworkError",
    "NodeFatalError",
    "NodeRunner",
    "NodeSession",
    "NodeState",
    "NodeStopped",
    "PersistentRoundRegistry",
    "RateLimitedError",
    "RetryPolicy",
    "RunReport",
    "ServerError",
    "ServerUnavailableError",
    "SessionLostError",
    "StateError",
    "TaskTransport",
    "Timeouts",
    "TorchTrainer",
    "Trainer",
    "TrainingConfig",
    "TransportError",
    "UnauthorizedError",
    "enroll",
]
