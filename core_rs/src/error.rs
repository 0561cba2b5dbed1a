//! The one error type of the core. Every variant names the offending argument, so the
//! Python `ValueError` built from it tells the caller which field to fix.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// A number that must be finite was NaN or infinite.
    NotFinite { name: String, value: f64 },
    /// A finite number outside its allowed range; `requirement` reads "must be ...".
    OutOfRange {
        name: String,
        requirement: &'static str,
        value: f64,
    },
    /// An integer option outside its allowed range.
    IntOutOfRange {
        name: &'static str,
        requirement: String,
        value: i64,
    },
    /// Arrays that describe the same rows have different lengths.
    LengthMismatch {
        name: &'static str,
        len: usize,
        reference: &'static str,
        reference_len: usize,
    },
    /// An array that must hold at least one row is empty.
    Empty { name: &'static str },
    /// A string option that is not one of the known choices.
    UnknownChoice {
        name: &'static str,
        value: String,
        choices: &'static [&'static str],
    },
    /// A matrix whose shape does not fit the other arguments.
    BadShape {
        name: &'static str,
        expected: String,
        actual: String,
    },
}

pub type CoreResult<T> = Result<T, CoreError>;

impl CoreError {
    /// The argument the error is about (with an index for array elements, e.g. `s[3]`).
    pub fn argument(&self) -> &str {
        match self {
            Self::NotFinite { name, .. } | Self::OutOfRange { name, .. } => name,
            Self::IntOutOfRange { name, .. }
            | Self::LengthMismatch { name, .. }
            | Self::Empty { name }
            | Self::UnknownChoice { name, .. }
            | Self::BadShape { name, .. } => name,
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFinite { name, value } => {
                write!(f, "{name} must be finite, got {}", PyFloat(*value))
            }
            Self::OutOfRange {
                name,
                requirement,
                value,
            } => write!(f, "{name} {requirement}, got {}", PyFloat(*value)),
            Self::IntOutOfRange {
                name,
                requirement,
                value,
            } => write!(f, "{name} {requirement}, got {value}"),
            Self::LengthMismatch {
                name,
                len,
                reference,
                reference_len,
            } => write!(
                f,
                "{name} has length {len} but {reference} has length {reference_len}; \
                 they must match"
            ),
            Self::Empty { name } => write!(f, "{name} must not be empty"),
            Self::UnknownChoice {
                name,
                value,
                choices,
            } => write!(
                f,
                "{name} must be one of {}, got {value:?}",
                choices
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::BadShape {
                name,
                expected,
                actual,
            } => write!(f, "{name} must have shape {expected}, got {actual}"),
        }
    }
}

impl std::error::Error for CoreError {}

/// Formats a float the way Python's `repr` does (`nan`, `inf`, `1e-300`), since the
/// messages are read by Python callers.
struct PyFloat(f64);

impl fmt::Display for PyFloat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("nan")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "inf" } else { "-inf" })
        } else {
            write!(f, "{v:?}")
        }
    }
}
