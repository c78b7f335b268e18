import math

import numpy as np
import pytest

from qflare.fl import (
    AttackConfig,
    Dataset,
    Method,
    as_float_observation,
    dlg_experiment,
    dlg_model,
    infer_label,
    invert_gradient,
    observe_uniform_ring,
    observed_gradient,
    reconstruction_metrics,
)

SHAPE = (1, 28, 28)


def _gradient(mnist: Dataset, index: int) -> tuple[np.ndarray, np.ndarray, int]:
    model = dlg_model(SHAPE, 10, seed=0)
    image, label = mnist.x_test[index], int(mnist.y_test[index])
    return observed_gradient(model, image, label), image.numpy(), label


def test_idlg_reads_the_label_off_the_last_layer(mnist: Dataset) -> None:
    model = dlg_model(SHAPE, 10, seed=0)
    for index in range(10):
        gradient, _, label = _gradient(mnist, index)
        assert infer_label(model, gradient, 10) == label


@pytest.mark.parametrize("method", ["idlg", "dlg"])
def test_a_plain_gradient_gives_the_image_away(mnist: Dataset, method: Method) -> None:
    gradient, truth, label = _gradient(mnist, 0)
    config = AttackConfig(method=method, iterations=10, seed=0)
    result = invert_gradient(dlg_model(SHAPE, 10, seed=0), gradient, SHAPE, 10, config)
    metrics = reconstruction_metrics(result.image, truth, result.label, label)
    assert metrics.label_correct
    assert metrics.psnr_db > 30.0


def test_a_random_vector_reveals_nothing(mnist: Dataset) -> None:
    gradient, truth, label = _gradient(mnist, 0)
    noise = np.random.default_rng(0).standard_normal(gradient.shape).astype(np.float32)
    noise *= float(gradient.std())
    config = AttackConfig(iterations=5, seed=0)
    result = invert_gradient(dlg_model(SHAPE, 10, seed=0), noise, SHAPE, 10, config)
    assert reconstruction_metrics(result.image, truth, result.label, label).psnr_db < 15.0


def test_masked_ring_words_are_accepted_and_useless(mnist: Dataset) -> None:
    experiment = dlg_experiment(
        dataset=mnist, num_images=2, iterations=3, observe=observe_uniform_ring, observation="ring"
    )
    assert len(experiment.trials) == 2
    assert experiment.mean_psnr_db < 15.0
    assert experiment.summary()["observation"] == "ring"
    assert all(np.isfinite(t.result.image).all() for t in experiment.trials)


def test_the_experiment_is_deterministic(mnist: Dataset) -> None:
    a = dlg_experiment(dataset=mnist, num_images=1, iterations=2, seed=4)
    b = dlg_experiment(dataset=mnist, num_images=1, iterations=2, seed=4)
    assert a.trials[0].index == b.trials[0].index
    assert np.array_equal(a.trials[0].result.image, b.trials[0].result.image)


def test_as_float_observation_reinterprets_bits() -> None:
    words = np.array([0x3F800000, 0xC0000000], dtype=np.uint32)
    assert as_float_observation(words).tolist() == [1.0, -2.0]
    assert as_float_observation(np.array([0.5], dtype=np.float64)).dtype == np.float32


def test_reconstruction_metrics_on_known_arrays() -> None:
    truth = np.array([[0.0, 1.0], [2.0, 3.0]])
    metrics = reconstruction_metrics(truth + 0.1, truth, 4, 4)
    assert metrics.mse == pytest.approx(0.01)
    assert metrics.psnr_db == pytest.approx(10 * math.log10(9.0 / 0.01))
    assert metrics.label_correct
    assert reconstruction_metrics(truth, truth, 1, 2).psnr_db == math.inf
