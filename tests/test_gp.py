"""The residual GP's kernel equals scikit-learn's composite kernel of SPEC 2."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Kernel, WhiteKernel

from fanout.engine.gp import (
    CONSTANT_BOUNDS,
    LENGTH_SCALE_BOUNDS,
    NOISE_BOUNDS,
    ResidualGP,
    ResidualKernel,
)


def composite() -> Kernel:
    return ConstantKernel(1.0, CONSTANT_BOUNDS) * RBF(
        [1.0, 1.0, 1.0], LENGTH_SCALE_BOUNDS
    ) + WhiteKernel(0.1, NOISE_BOUNDS)


def window(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + 0.1 * rng.standard_normal(n)
    return x, y


def test_same_hyper_parameters_and_bounds() -> None:
    ours, theirs = ResidualKernel(), composite()
    np.testing.assert_array_equal(ours.theta, theirs.theta)
    np.testing.assert_array_equal(ours.bounds, theirs.bounds)


@settings(max_examples=40, deadline=None)
@given(
    theta=st.lists(st.floats(-4.0, 4.0), min_size=5, max_size=5),
    seed=st.integers(0, 1000),
)
def test_gram_gradient_cross_and_diag_match(theta: list[float], seed: int) -> None:
    x, _ = window(12, seed)
    ours = ResidualKernel().clone_with_theta(np.array(theta))
    theirs = composite().clone_with_theta(np.array(theta))
    np.testing.assert_allclose(ours.theta, theirs.theta, rtol=1e-12, atol=1e-12)
    gram, gradient = ours(x, eval_gradient=True)
    want_gram, want_gradient = theirs(x, eval_gradient=True)
    np.testing.assert_allclose(gram, want_gram, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(gradient, want_gradient, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(ours(x[:4], x), theirs(x[:4], x), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(ours.diag(x), theirs.diag(x), rtol=1e-12)


def test_gradient_only_on_the_training_gram() -> None:
    x, _ = window(4, 0)
    with pytest.raises(ValueError, match="Y=None"):
        ResidualKernel()(x, x, eval_gradient=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_reaches_the_composite_kernels_optimum(seed: int) -> None:
    x, y = window(40, seed)
    fits = []
    for kernel in (ResidualKernel(), composite()):
        regressor = GaussianProcessRegressor(
            kernel=kernel, normalize_y=True, n_restarts_optimizer=2, random_state=0
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            regressor.fit(x, y)
        fits.append(regressor)
    ours, theirs = fits
    assert ours.log_marginal_likelihood_value_ == pytest.approx(
        theirs.log_marginal_likelihood_value_, rel=1e-6
    )
    np.testing.assert_allclose(ours.kernel_.theta, theirs.kernel_.theta, atol=1e-3)
    mean, sd = ours.predict(x[:5], return_std=True)
    want_mean, want_sd = theirs.predict(x[:5], return_std=True)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sd, want_sd, rtol=1e-4, atol=1e-6)


def test_rust_posterior_equals_sklearn_predict_with_our_kernel() -> None:
    rng = np.random.default_rng(3)
    s = rng.integers(1, 40, 30).astype(np.float64)
    gamma = rng.uniform(0.5, 2.0, 30)
    load = rng.integers(0, 20, 30).astype(np.float64)
    residual = 3.0 * np.sin(s / 7) + rng.standard_normal(30)
    gp = ResidualGP.fit(s, gamma, load, residual, theta=None, restarts=1, seed=0)
    features = np.column_stack((np.log(s), np.log(gamma), np.log1p(load)))
    x_mean, x_scale = features.mean(axis=0), features.std(axis=0)
    regressor = GaussianProcessRegressor(
        kernel=ResidualKernel().clone_with_theta(np.asarray(gp.theta_)),
        normalize_y=True,
        optimizer=None,
    ).fit((features - x_mean) / x_scale, residual)
    want_mean, want_sd = regressor.predict((features[:7] - x_mean) / x_scale, return_std=True)
    mean, sd = gp.predict(s[:7], gamma[:7], load[:7])
    np.testing.assert_allclose(mean, want_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sd, want_sd, rtol=1e-9, atol=1e-9)
