"""The residual Gaussian process of SPEC section 2.

Fitting (hyper-parameter optimisation) stays in scikit-learn; the fitted posterior is
exported to `fanout._core.GpPosterior`, which predicts on every request's path.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Kernel, WhiteKernel

from fanout._core import GpPosterior

F64 = NDArray[np.float64]

# Bounds in standardised feature units: a length-scale far below the spacing of the
# data would memorise noise, one far above it would flatten every effect.
LENGTH_SCALE_BOUNDS = (1e-2, 1e2)
CONSTANT_BOUNDS = (1e-4, 1e3)
NOISE_BOUNDS = (1e-6, 1e1)


def default_kernel() -> Kernel:
    """`ConstantKernel * RBF([1, 1, 1]) + WhiteKernel` (SPEC 2)."""
    return ConstantKernel(1.0, CONSTANT_BOUNDS) * RBF(
        length_scale=[1.0, 1.0, 1.0], length_scale_bounds=LENGTH_SCALE_BOUNDS
    ) + WhiteKernel(noise_level=0.1, noise_level_bounds=NOISE_BOUNDS)


def raw_features(s: F64, gamma: F64, load: F64) -> F64:
    """Features before standardisation, shape (n, 3): log s, log gamma, log1p load."""
    return np.column_stack((np.log(s), np.log(gamma), np.log1p(load)))


class ResidualGP:
    """A fitted residual model over `(s, gamma, load)`.

    Attributes
    ----------
    theta_ : list of float
        Log hyper-parameters of the fitted kernel (scikit-learn's `kernel_.theta`);
        stored with the task so a restored model rebuilds the same posterior.
    posterior_ : GpPosterior
        The serve-time predictor.
    """

    def __init__(self, theta: Sequence[float], posterior: GpPosterior) -> None:
        self.theta_ = [float(v) for v in theta]
        self.posterior_ = posterior

    @classmethod
    def fit(
        cls,
        s: F64,
        gamma: F64,
        load: F64,
        residual: F64,
        *,
        theta: Sequence[float] | None,
        restarts: int,
        seed: int,
    ) -> ResidualGP:
        """Fit on a window of shape (n,) arrays.

        With `theta` the hyper-parameters are kept as given (only the posterior is
        recomputed, about a millisecond); without, they are re-optimised (SPEC 4.6).
        """
        features = raw_features(s, gamma, load)
        x_mean = features.mean(axis=0)
        x_scale = features.std(axis=0)
        # A feature constant over the window (e.g. gamma always 1) carries no
        # information; scale 1 keeps it at zero instead of dividing by zero.
        x_scale = np.where(x_scale > 1e-12, x_scale, 1.0)
        x_train = (features - x_mean) / x_scale
        kernel = default_kernel()
        if theta is not None:
            kernel = kernel.clone_with_theta(np.asarray(theta, dtype=np.float64))
        regressor = GaussianProcessRegressor(
            kernel=kernel,
            normalize_y=True,
            optimizer=None if theta is not None else "fmin_l_bfgs_b",
            n_restarts_optimizer=restarts,
            random_state=seed,
        )
        with warnings.catch_warnings():
            # Hyper-parameters resting on a bound are expected on small windows.
            warnings.simplefilter("ignore", ConvergenceWarning)
            regressor.fit(x_train, residual)
        fitted = regressor.kernel_
        params = fitted.get_params()
        posterior = GpPosterior(
            x_train=np.ascontiguousarray(regressor.X_train_, dtype=np.float64),
            alpha=np.ascontiguousarray(np.ravel(regressor.alpha_), dtype=np.float64),
            chol=np.ascontiguousarray(regressor.L_, dtype=np.float64),
            constant=float(params["k1__k1__constant_value"]),
            length_scales=np.asarray(params["k1__k2__length_scale"], dtype=np.float64),
            noise=float(params["k2__noise_level"]),
            x_mean=x_mean,
            x_scale=x_scale,
            y_mean=float(np.ravel(regressor._y_train_mean)[0]),
            y_scale=float(np.ravel(regressor._y_train_std)[0]),
        )
        return cls(fitted.theta, posterior)

    def predict(self, s: F64, gamma: F64, load: F64) -> tuple[F64, F64]:
        """Residual mean and standard deviation in seconds, shape (m,) each."""
        return self.posterior_.predict(s, gamma, load)
