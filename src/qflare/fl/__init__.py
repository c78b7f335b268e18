"""Federated learning: datasets, partitioners, models, clients, strategies, attacks.

Nothing here knows about cryptography. The :class:`Aggregator` protocol is the seam where
secure aggregation (built in ``qflare.sim`` on top of ``qflare.protocol``) plugs in; the
strategies only ever see its :class:`AggregateResult`.

Names load lazily (PEP 562): a node that only needs ``qflare.fl.partition`` does not pay for torch
and sklearn (about three seconds of start-up per process) until it trains a torch model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# eager and light (numpy only); the submodule shares its name with the function ``partition``,
# which a lazy import would leave shadowed by the module
from qflare.fl.partition import (
    PartitionSpec,
    dirichlet_partition,
    iid_partition,
    parse_partition,
    partition,
    shard_partition,
)

if TYPE_CHECKING:
    from qflare.fl.aggregate import Aggregator, PlainAggregator, Update, weighted_sum
    from qflare.fl.attack import (
        AttackConfig,
        AttackMetrics,
        AttackResult,
        Method,
        as_float_observation,
        dlg_model,
        infer_label,
        invert_gradient,
        observed_gradient,
        reconstruction_metrics,
    )
    from qflare.fl.attack_experiment import (
        DlgExperiment,
        DlgTrial,
        Observer,
        dlg_experiment,
        observe_plain,
        observe_random_gaussian,
        observe_uniform_ring,
    )
    from qflare.fl.client import (
        Config,
        EvalResult,
        FitResult,
        Metrics,
        NDArrays,
        NumPyClient,
        TorchClient,
        evaluate_batches,
    )
    from qflare.fl.datasets import DATASET_NAMES, Dataset, load_dataset, load_digits, load_mnist
    from qflare.fl.models import (
        MODEL_NAMES,
        DigitsCNN,
        FlatVector,
        LeNet,
        build_model,
        default_model_name,
        get_flat,
        join_flat,
        num_parameters,
        set_flat,
        split_flat,
    )
    from qflare.fl.runtime import torch_threads
    from qflare.fl.strategy import (
        STRATEGY_NAMES,
        AggregateResult,
        FedAdagrad,
        FedAdam,
        FedAvg,
        FedYogi,
        Strategy,
        build_strategy,
        sample_clients,
    )

_WHERE: dict[str, str] = {
    "AggregateResult": "qflare.fl.strategy",
    "Aggregator": "qflare.fl.aggregate",
    "AttackConfig": "qflare.fl.attack",
    "AttackMetrics": "qflare.fl.attack",
    "AttackResult": "qflare.fl.attack",
    "Config": "qflare.fl.client",
    "DATASET_NAMES": "qflare.fl.datasets",
    "Dataset": "qflare.fl.datasets",
    "DigitsCNN": "qflare.fl.models",
    "DlgExperiment": "qflare.fl.attack_experiment",
    "DlgTrial": "qflare.fl.attack_experiment",
    "EvalResult": "qflare.fl.client",
    "FedAdagrad": "qflare.fl.strategy",
    "FedAdam": "qflare.fl.strategy",
    "FedAvg": "qflare.fl.strategy",
    "FedYogi": "qflare.fl.strategy",
    "FitResult": "qflare.fl.client",
    "FlatVector": "qflare.fl.models",
    "LeNet": "qflare.fl.models",
    "MODEL_NAMES": "qflare.fl.models",
    "Method": "qflare.fl.attack",
    "Metrics": "qflare.fl.client",
    "NDArrays": "qflare.fl.client",
    "NumPyClient": "qflare.fl.client",
    "Observer": "qflare.fl.attack_experiment",
    "PlainAggregator": "qflare.fl.aggregate",
    "STRATEGY_NAMES": "qflare.fl.strategy",
    "Strategy": "qflare.fl.strategy",
    "TorchClient": "qflare.fl.client",
    "Update": "qflare.fl.aggregate",
    "as_float_observation": "qflare.fl.attack",
    "build_model": "qflare.fl.models",
    "build_strategy": "qflare.fl.strategy",
    "default_model_name": "qflare.fl.models",
    "dlg_experiment": "qflare.fl.attack_experiment",
    "dlg_model": "qflare.fl.attack",
    "evaluate_batches": "qflare.fl.client",
    "get_flat": "qflare.fl.models",
    "infer_label": "qflare.fl.attack",
    "invert_gradient": "qflare.fl.attack",
    "join_flat": "qflare.fl.models",
    "load_dataset": "qflare.fl.datasets",
    "load_digits": "qflare.fl.datasets",
    "load_mnist": "qflare.fl.datasets",
    "num_parameters": "qflare.fl.models",
    "observe_plain": "qflare.fl.attack_experiment",
    "observe_random_gaussian": "qflare.fl.attack_experiment",
    "observe_uniform_ring": "qflare.fl.attack_experiment",
    "observed_gradient": "qflare.fl.attack",
    "reconstruction_metrics": "qflare.fl.attack",
    "sample_clients": "qflare.fl.strategy",
    "set_flat": "qflare.fl.models",
    "split_flat": "qflare.fl.models",
    "torch_threads": "qflare.fl.runtime",
    "weighted_sum": "qflare.fl.aggregate",
}

__all__ = [
    "DATASET_NAMES",
    "MODEL_NAMES",
    "STRATEGY_NAMES",
    "AggregateResult",
    "Aggregator",
    "AttackConfig",
    "AttackMetrics",
    "AttackResult",
    "Config",
    "Dataset",
    "DigitsCNN",
    "DlgExperiment",
    "DlgTrial",
    "EvalResult",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedYogi",
    "FitResult",
    "FlatVector",
    "LeNet",
    "Method",
    "Metrics",
    "NDArrays",
    "NumPyClient",
    "Observer",
    "PartitionSpec",
    "PlainAggregator",
    "Strategy",
    "TorchClient",
    "Update",
    "as_float_observation",
    "build_model",
    "build_strategy",
    "default_model_name",
    "dirichlet_partition",
    "dlg_experiment",
    "dlg_model",
    "evaluate_batches",
    "get_flat",
    "iid_partition",
    "infer_label",
    "invert_gradient",
    "join_flat",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "num_parameters",
    "observe_plain",
    "observe_random_gaussian",
    "observe_uniform_ring",
    "observed_gradient",
    "parse_partition",
    "partition",
    "reconstruction_metrics",
    "sample_clients",
    "set_flat",
    "shard_partition",
    "split_flat",
    "torch_threads",
    "weighted_sum",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
