//! The Python face of the core: converts arrays in and out, releases the GIL for long
//! batches and maps `CoreError` to `ValueError`. No arithmetic lives here.

// pyo3 extracts arguments as owned values; the functions only borrow them.
#![allow(clippy::needless_pass_by_value)]

use std::borrow::Cow;

use numpy::{
    AllowTypeChange, PyArray1, PyArrayLike1, PyArrayLike2, PyArrayMethods, PyReadonlyArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::amdahl::{self, Amdahl};
use crate::bounds::{self, BoundRule, BoundsConfig, Strategy};
use crate::error::CoreError;
use crate::gp::{GpParts, GpPosterior};
use crate::normal;
use crate::score::{self, ChoiceRule, ScoreConfig};
use crate::wire::{self, RowFields};

/// Any 1-d input convertible to float64 (float64 arrays pass without a copy).
type Rows<'py> = PyArrayLike1<'py, f64, AllowTypeChange>;
type Matrix<'py> = PyArrayLike2<'py, f64, AllowTypeChange>;
type Output<'py> = Bound<'py, PyArray1<f64>>;

/// Batches from this many rows run with the GIL released, so other Python threads (the
/// gRPC server's) proceed meanwhile; below it the release costs more than it frees.
const DETACH_MIN_ROWS: usize = 4096;
/// A GP candidate costs about `n^2` operations against a few for the other kernels.
const GP_ROW_WEIGHT: usize = 16;

impl From<CoreError> for PyErr {
    fn from(err: CoreError) -> Self {
        PyValueError::new_err(err.to_string())
    }
}

/// The array's elements in row-major order as a slice; any other layout (strided
/// views, Fortran order as in sklearn's `X_train_`) is copied.
fn contiguous<'a, D: numpy::ndarray::Dimension>(
    array: &'a PyReadonlyArray<'_, f64, D>,
) -> Cow<'a, [f64]> {
    let view = array.as_array();
    match view.to_slice() {
        Some(slice) => Cow::Borrowed(slice),
        None => Cow::Owned(view.iter().copied().collect()),
    }
}

/// A new float64 array of `len` rows, allocated by numpy: it backs large arrays with
/// huge pages, so filling a million rows does not fault in 2000 small pages (which
/// cost about as much as the arithmetic).
fn new_rows(py: Python<'_>, len: usize) -> Output<'_> {
    PyArray1::zeros(py, len, false)
}

/// Runs `work` on mutable views of `outputs`, without the GIL when `weight` (rows,
/// scaled by their cost) is large enough to be worth the release.
fn fill<const N: usize, T, F>(
    py: Python<'_>,
    outputs: [&Output<'_>; N],
    weight: usize,
    work: F,
) -> PyResult<T>
where
    F: FnOnce([&mut [f64]; N]) -> Result<T, CoreError> + Send,
    T: Send,
{
    let mut guards = outputs.map(PyArrayMethods::readwrite);
    let mut slices = Vec::with_capacity(N);
    for guard in &mut guards {
        slices.push(
            guard
                .as_slice_mut()
                .map_err(|e| PyRuntimeError::new_err(e.to_string()))?,
        );
    }
    let slices: [&mut [f64]; N] = slices
        .try_into()
        .map_err(|_| PyRuntimeError::new_err("output views"))?;
    let result = if weight >= DETACH_MIN_ROWS {
        py.detach(|| work(slices))
    } else {
        work(slices)
    };
    Ok(result?)
}

fn nodes_arg(nodes: i64) -> Result<usize, CoreError> {
    usize::try_from(nodes).map_err(|_| CoreError::IntOutOfRange {
        name: "nodes",
        requirement: format!("must be in [1, {}]", score::MAX_NODES),
        value: nodes,
    })
}

/// SPEC 2: `c + gamma**k * t1 * ((1 - p) + p / s)` per row.
#[pyfunction]
#[pyo3(signature = (s, gamma, *, t1, p, c, k))]
fn amdahl_time<'py>(
    py: Python<'py>,
    s: Rows<'py>,
    gamma: Rows<'py>,
    t1: f64,
    p: f64,
    c: f64,
    k: f64,
) -> PyResult<Output<'py>> {
    let model = Amdahl::new(t1, p, c, k)?;
    let (s, gamma) = (contiguous(&s), contiguous(&gamma));
    let out = new_rows(py, s.len());
    fill(py, [&out], s.len(), |[out]| {
        amdahl::amdahl_time_into(&s, &gamma, model, out)
    })?;
    Ok(out)
}

/// SPEC 3/4.5: the parallel fraction each run implies, clipped to [0, 1].
#[pyfunction]
#[pyo3(signature = (s, gamma, t, *, t1, c, k))]
fn p_current<'py>(
    py: Python<'py>,
    s: Rows<'py>,
    gamma: Rows<'py>,
    t: Rows<'py>,
    t1: f64,
    c: f64,
    k: f64,
) -> PyResult<Output<'py>> {
    // p does not enter the inverse formula; 0 is merely a valid placeholder.
    let model = Amdahl::new(t1, 0.0, c, k)?;
    let (s, gamma, t) = (contiguous(&s), contiguous(&gamma), contiguous(&t));
    let out = new_rows(py, s.len());
    fill(py, [&out], s.len(), |[out]| {
        amdahl::p_current_into(&s, &gamma, &t, model, out)
    })?;
    Ok(out)
}

/// SPEC 4.5: the moving average of `p` replayed over `p_cur`.
#[pyfunction]
#[pyo3(signature = (p_cur, *, alpha))]
fn replay_p(p_cur: Rows<'_>, alpha: f64) -> PyResult<f64> {
    Ok(amdahl::replay_p(&contiguous(&p_cur), alpha)?)
}

/// SPEC 4.3: the complexity exponent `k` from the window, or None.
#[pyfunction]
#[pyo3(signature = (s, gamma, t, *, c, min_spread = 0.05))]
fn fit_k(
    s: Rows<'_>,
    gamma: Rows<'_>,
    t: Rows<'_>,
    c: f64,
    min_spread: f64,
) -> PyResult<Option<f64>> {
    let (s, gamma, t) = (contiguous(&s), contiguous(&gamma), contiguous(&t));
    Ok(amdahl::fit_k(&s, &gamma, &t, c, min_spread)?)
}

/// SPEC 4.4: the baseline `T1` from the window's `s = 1` rows, or None.
#[pyfunction]
#[pyo3(signature = (s, gamma, t, *, c, k))]
fn baseline_t1(s: Rows<'_>, gamma: Rows<'_>, t: Rows<'_>, c: f64, k: f64) -> PyResult<Option<f64>> {
    let (s, gamma, t) = (contiguous(&s), contiguous(&gamma), contiguous(&t));
    Ok(amdahl::baseline_t1(&s, &gamma, &t, c, k)?)
}

/// SPEC 5.1: the integer search space `(lo, hi)`.
#[pyfunction]
#[pyo3(signature = (
    p, *, strategy = "cost", rule = "wide", urgency = 1.0, resource_exponent = 0.5,
    eta = 0.9, min_parallelism = 1, max_parallelism = 64,
))]
#[allow(clippy::too_many_arguments)] // mirrors the keyword options of SPEC 5.1
fn search_bounds(
    p: f64,
    strategy: &str,
    rule: &str,
    urgency: f64,
    resource_exponent: f64,
    eta: f64,
    min_parallelism: i64,
    max_parallelism: i64,
) -> PyResult<(i64, i64)> {
    let config = BoundsConfig {
        strategy: Strategy::parse(strategy)?,
        rule: BoundRule::parse(rule)?,
        urgency,
        resource_exponent,
        eta,
        min_parallelism,
        max_parallelism,
    };
    Ok(bounds::search_bounds(p, &config)?)
}

/// SPEC 5.3: the expected score `E[P**a] * s**b` per candidate.
#[pyfunction]
#[pyo3(signature = (s, mean, sd, *, urgency = 1.0, resource_exponent = 0.5, nodes = 32))]
fn expected_score<'py>(
    py: Python<'py>,
    s: Rows<'py>,
    mean: Rows<'py>,
    sd: Rows<'py>,
    urgency: f64,
    resource_exponent: f64,
    nodes: i64,
) -> PyResult<Output<'py>> {
    let config = ScoreConfig {
        urgency,
        resource_exponent,
        nodes: nodes_arg(nodes)?,
    };
    let (s, mean, sd) = (contiguous(&s), contiguous(&mean), contiguous(&sd));
    let out = new_rows(py, s.len());
    fill(py, [&out], s.len(), |[out]| {
        score::expected_score_into(&s, &mean, &sd, &config, out)
    })?;
    Ok(out)
}

/// SPEC 5.3-5.5: `(index, scores, deadline_met)` of the chosen candidate.
#[pyfunction]
#[pyo3(signature = (
    s, mean, sd, *, urgency = 1.0, resource_exponent = 0.5, deadline = None,
    confidence = 0.9, tie_tolerance = 0.005, nodes = 32,
))]
#[allow(clippy::too_many_arguments)] // mirrors the keyword options of SPEC 5.3-5.5
fn choose<'py>(
    py: Python<'py>,
    s: Rows<'py>,
    mean: Rows<'py>,
    sd: Rows<'py>,
    urgency: f64,
    resource_exponent: f64,
    deadline: Option<f64>,
    confidence: f64,
    tie_tolerance: f64,
    nodes: i64,
) -> PyResult<(usize, Output<'py>, bool)> {
    let config = ScoreConfig {
        urgency,
        resource_exponent,
        nodes: nodes_arg(nodes)?,
    };
    let rule = ChoiceRule {
        deadline,
        confidence,
        tie_tolerance,
    };
    let (s, mean, sd) = (contiguous(&s), contiguous(&mean), contiguous(&sd));
    let scores = new_rows(py, s.len());
    let (index, deadline_met) = fill(py, [&scores], s.len(), |[out]| {
        score::choose_into(&s, &mean, &sd, &config, &rule, out)
    })?;
    Ok((index, scores, deadline_met))
}

/// The candidate table as protobuf wire bytes of the repeated message field `field`;
/// `row_fields` are the row message's field numbers `(parallelism, mean, sd, score)`.
#[pyfunction]
#[pyo3(signature = (s, mean, sd, score, *, field, row_fields))]
fn encode_candidates<'py>(
    py: Python<'py>,
    s: Rows<'py>,
    mean: Rows<'py>,
    sd: Rows<'py>,
    score: Rows<'py>,
    field: u32,
    row_fields: (u32, u32, u32, u32),
) -> PyResult<Bound<'py, PyBytes>> {
    let (parallelism, mean_field, sd_field, score_field) = row_fields;
    let fields = RowFields {
        parallelism,
        mean: mean_field,
        sd: sd_field,
        score: score_field,
    };
    let (s, mean, sd, score) = (
        contiguous(&s),
        contiguous(&mean),
        contiguous(&sd),
        contiguous(&score),
    );
    let rows = wire::Rows {
        parallelism: &s,
        mean: &mean,
        sd: &sd,
        score: &score,
    };
    let mut out = Vec::new();
    wire::encode_rows(field, fields, rows, &mut out)?;
    Ok(PyBytes::new(py, &out))
}

/// The standard Normal quantile (AS 241).
#[pyfunction]
fn normal_quantile(q: f64) -> PyResult<f64> {
    Ok(normal::normal_quantile(q)?)
}

/// The serve-time posterior of a residual GP fitted by scikit-learn.
#[pyclass(name = "GpPosterior", module = "fanout._core", frozen)]
struct PyGpPosterior {
    inner: GpPosterior,
}

#[pymethods]
impl PyGpPosterior {
    #[new]
    #[pyo3(signature = (
        *, x_train, alpha, chol, constant, length_scales, noise, x_mean, x_scale, y_mean,
        y_scale,
    ))]
    #[allow(clippy::too_many_arguments)] // one keyword per fitted quantity of sklearn's GP
    fn new(
        x_train: Matrix<'_>,
        alpha: Rows<'_>,
        chol: Matrix<'_>,
        constant: f64,
        length_scales: Rows<'_>,
        noise: f64,
        x_mean: Rows<'_>,
        x_scale: Rows<'_>,
        y_mean: f64,
        y_scale: f64,
    ) -> PyResult<Self> {
        let shape2 = |m: &Matrix<'_>| (m.shape()[0], m.shape()[1]);
        let inner = GpPosterior::new(&GpParts {
            x_train: &contiguous(&x_train),
            x_train_shape: shape2(&x_train),
            alpha: &contiguous(&alpha),
            chol: &contiguous(&chol),
            chol_shape: shape2(&chol),
            constant,
            length_scales: &contiguous(&length_scales),
            noise,
            x_mean: &contiguous(&x_mean),
            x_scale: &contiguous(&x_scale),
            y_mean,
            y_scale,
        })?;
        Ok(Self { inner })
    }

    /// Number of training rows.
    #[getter]
    fn n_train(&self) -> usize {
        self.inner.n_train()
    }

    /// Residual `(mean, sd)` in seconds for raw candidates `(s, gamma, load)`.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        s: Rows<'py>,
        gamma: Rows<'py>,
        load: Rows<'py>,
    ) -> PyResult<(Output<'py>, Output<'py>)> {
        let (s, gamma, load) = (contiguous(&s), contiguous(&gamma), contiguous(&load));
        let (mean, sd) = (new_rows(py, s.len()), new_rows(py, s.len()));
        let weight = s.len().saturating_mul(GP_ROW_WEIGHT);
        fill(py, [&mean, &sd], weight, |[mean, sd]| {
            self.inner.predict_into(&s, &gamma, &load, mean, sd)
        })?;
        Ok((mean, sd))
    }

    fn __repr__(&self) -> String {
        format!("GpPosterior(n_train={})", self.inner.n_train())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(amdahl_time, module)?)?;
    module.add_function(wrap_pyfunction!(p_current, module)?)?;
    module.add_function(wrap_pyfunction!(replay_p, module)?)?;
    module.add_function(wrap_pyfunction!(fit_k, module)?)?;
    module.add_function(wrap_pyfunction!(baseline_t1, module)?)?;
    module.add_function(wrap_pyfunction!(search_bounds, module)?)?;
    module.add_function(wrap_pyfunction!(expected_score, module)?)?;
    module.add_function(wrap_pyfunction!(choose, module)?)?;
    module.add_function(wrap_pyfunction!(normal_quantile, module)?)?;
    module.add_function(wrap_pyfunction!(encode_candidates, module)?)?;
    module.add_class::<PyGpPosterior>()?;
    Ok(())
}
