"""The residual Gaussian process of SPEC section 2.

Fitting (hyper-parameter optimisation) stays in scikit-learn; the fitted posterior is
exported to `fanout._core.GpPosterior`, which predicts on every request's path.

The kernel is SPEC 2's `ConstantKernel * RBF(ARD) + WhiteKernel` written as one
scikit-learn `Kernel`: the composite version spends about half of each likelihood
evaluation cloning and introspecting its parts, which doubled the retrain time.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel, StationaryKernelMixin

from fanout._core import GpPosterior

F64 = NDArray[np.float64]

# Bounds in standardised feature units: a length-scale far below the spacing of the
# data would memorise noise, one far above it would flatten every effect.
LENGTH_SCALE_BOUNDS = (1e-2, 1e2)
CONSTANT_BOUNDS = (1e-4, 1e3)
NOISE_BOUNDS = (1e-6, 1e1)


class ResidualKernel(StationaryKernelMixin, Kernel):  # type: ignore[misc]
    """`constant * exp(-|x - x'|^2 / 2 l^2) + noise * [x == x']` with one `l` per feature.

    Equal to `ConstantKernel * RBF(length_scale=[...]) + WhiteKernel` with the bounds
    below, hyper-parameters in the same order (`theta` = log of constant, length
    scales, noise), so stored `gp_theta` values keep their meaning.
    """

    def __init__(
        self,
        constant_value: float = 1.0,
        length_scale: Sequence[float] | F64 = (1.0, 1.0, 1.0),
        noise_level: float = 0.1,
    ) -> None:
        self.constant_value = constant_value
        self.length_scale = length_scale
        self.noise_level = noise_level

    @property
    def hyperparameter_constant_value(self) -> Hyperparameter:
        return Hyperparameter("constant_value", "numeric", CONSTANT_BOUNDS)

    @property
    def hyperparameter_length_scale(self) -> Hyperparameter:
        return Hyperparameter(
            "length_scale", "numeric", LENGTH_SCALE_BOUNDS, len(self.length_scale)
        )

    @property
    def hyperparameter_noise_level(self) -> Hyperparameter:
        return Hyperparameter("noise_level", "numeric", NOISE_BOUNDS)

    @property
    def theta(self) -> F64:
        values: F64 = np.hstack((self.constant_value, self.length_scale, self.noise_level))
        return np.log(values)

    @theta.setter
    def theta(self, theta: F64) -> None:
        values = np.exp(np.asarray(theta, dtype=np.float64))
        self.constant_value = float(values[0])
        self.length_scale = values[1:-1].copy()
        self.noise_level = float(values[-1])

    def clone_with_theta(self, theta: F64) -> ResidualKernel:
        # The optimiser clones once per likelihood evaluation; the generic clone
        # introspects the constructor each time.
        cloned = ResidualKernel(length_scale=self.length_scale)
        cloned.theta = theta
        return cloned

    @property
    def requires_vector_input(self) -> bool:
        return True

    def __call__(  # scikit-learn's Kernel signature, names included
        self,
        X: F64,  # noqa: N803
        Y: F64 | None = None,  # noqa: N803
        eval_gradient: bool = False,
    ) -> F64 | tuple[F64, F64]:
        x: F64 = np.atleast_2d(X)
        scales = np.asarray(self.length_scale, dtype=np.float64)
        if Y is not None:
            if eval_gradient:
                raise ValueError("the gradient is only defined for Y=None")
            y: F64 = np.atleast_2d(Y)
            cross2 = ((x[:, None, :] - y[None, :, :]) / scales) ** 2
            # The noise term is zero between distinct inputs (WhiteKernel's rule).
            cross: F64 = self.constant_value * np.exp(-0.5 * cross2.sum(axis=2))
            return cross
        n = x.shape[0]
        scaled2 = ((x[:, None, :] - x[None, :, :]) / scales) ** 2
        smooth: F64 = self.constant_value * np.exp(-0.5 * scaled2.sum(axis=2))
        gram = smooth.copy()
        gram.flat[:: n + 1] += self.noise_level
        if not eval_gradient:
            return gram
        # Derivatives with respect to the log hyper-parameters, in theta's order.
        gradient = np.zeros((n, n, len(scales) + 2))
        gradient[:, :, 0] = smooth
        gradient[:, :, 1:-1] = scaled2 * smooth[:, :, None]
        gradient[:, :, -1].flat[:: n + 1] = self.noise_level
        return gram, gradient

    def diag(self, X: F64) -> F64:  # noqa: N803
        return np.full(np.shape(X)[0], self.constant_value + self.noise_level)

    def __repr__(self) -> str:
        return (
            f"{self.constant_value:.3g} * RBF({np.round(self.length_scale, 3).tolist()})"
            f" + White({self.noise_level:.3g})"
        )


def default_kernel() -> ResidualKernel:
    """The kernel at its starting hyper-parameters (SPEC 2)."""
    return ResidualKernel()


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

    def __init__(self, theta: Sequence[float] | F64, posterior: GpPosterior) -> None:
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
        fitted: ResidualKernel = regressor.kernel_
        posterior = GpPosterior(
            x_train=np.ascontiguousarray(regressor.X_train_, dtype=np.float64),
            alpha=np.ascontiguousarray(np.ravel(regressor.alpha_), dtype=np.float64),
            chol=np.ascontiguousarray(regressor.L_, dtype=np.float64),
            constant=float(fitted.constant_value),
            length_scales=np.asarray(fitted.length_scale, dtype=np.float64),
            noise=float(fitted.noise_level),
            x_mean=x_mean,
            x_scale=x_scale,
            y_mean=float(np.ravel(regressor._y_train_mean)[0]),
            y_scale=float(np.ravel(regressor._y_train_std)[0]),
        )
        return cls(fitted.theta, posterior)

    def predict(self, s: F64, gamma: F64, load: F64) -> tuple[F64, F64]:
        """Residual mean and standard deviation in seconds, shape (m,) each."""
        return self.posterior_.predict(s, gamma, load)
