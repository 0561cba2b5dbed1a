//! fanout's prediction and decision core, exposed to Python as `fanout._core`.
//!
//! The math lives in plain Rust modules over slices (no Python types), each validating
//! its own arguments and returning [`error::CoreError`]; `bindings` is the only module
//! that knows about Python.

pub mod amdahl;
pub mod bounds;
pub mod check;
pub mod error;
pub mod fastmath;
pub mod gp;
pub mod normal;
pub mod par;
pub mod score;
pub mod wire;

mod bindings;

use pyo3::prelude::*;

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    bindings::register(module)
}
