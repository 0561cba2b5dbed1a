//! Argument validation shared by every entry point. Every input is checked before a
//! result is returned (long columns in the same pass as the arithmetic, see `par`), so
//! bad input never yields a result, partial or not.

use crate::error::{CoreError, CoreResult};
use crate::par::{reduce_chunks, ChunkFold};

/// The admissible range of a finite number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    Any,
    AtLeastOne,
    AboveOne,
    Positive,
    NonNegative,
    /// `[0, 1]`
    Unit,
    /// `(0, 1)`
    UnitOpen,
    /// `(0, 1]`
    UnitLeftOpen,
    /// `[0, 3]`, the SPEC 4.3 clip range of `k`.
    Exponent,
}

/// A range as `(lower, lower included, upper, upper included)`. Those of [`Range`]
/// exclude infinite ends, so every value they admit is finite.
pub type Bounds = (f64, bool, f64, bool);

/// Admits everything but NaN: for columns already validated.
pub const UNCHECKED: Bounds = (f64::NEG_INFINITY, true, f64::INFINITY, true);

impl Range {
    pub fn bounds(self) -> Bounds {
        const INF: f64 = f64::INFINITY;
        match self {
            Self::Any => (-INF, false, INF, false),
            Self::AtLeastOne => (1.0, true, INF, false),
            Self::AboveOne => (1.0, false, INF, false),
            Self::Positive => (0.0, false, INF, false),
            Self::NonNegative => (0.0, true, INF, false),
            Self::Unit => (0.0, true, 1.0, true),
            Self::UnitOpen => (0.0, false, 1.0, false),
            Self::UnitLeftOpen => (0.0, false, 1.0, true),
            Self::Exponent => (0.0, true, 3.0, true),
        }
    }

    pub fn requirement(self) -> &'static str {
        match self {
            Self::Any => "must be a number",
            Self::AtLeastOne => "must be >= 1",
            Self::AboveOne => "must be > 1",
            Self::Positive => "must be > 0",
            Self::NonNegative => "must be >= 0",
            Self::Unit => "must be in [0, 1]",
            Self::UnitOpen => "must be in (0, 1)",
            Self::UnitLeftOpen => "must be in (0, 1]",
            Self::Exponent => "must be in [0, 3]",
        }
    }

    pub fn admits(self, x: f64) -> bool {
        admitted(self.bounds(), x)
    }
}

/// Comparisons only (NaN fails them all), combined without branches so that a loop
/// over them vectorises whether or not the range is known at compile time.
#[inline(always)]
pub fn admitted((lower, lower_in, upper, upper_in): Bounds, x: f64) -> bool {
    ((x > lower) | (lower_in & (x == lower))) & ((x < upper) | (upper_in & (x == upper)))
}

fn describe(name: String, value: f64, range: Range) -> CoreError {
    if value.is_finite() {
        CoreError::OutOfRange {
            name,
            requirement: range.requirement(),
            value,
        }
    } else {
        CoreError::NotFinite { name, value }
    }
}

/// A scalar argument: finite and within `range`.
pub fn scalar(name: &str, value: f64, range: Range) -> CoreResult<f64> {
    if range.admits(value) {
        Ok(value)
    } else {
        Err(describe(name.to_owned(), value, range))
    }
}

/// Whether every element of a chunk is admitted; a branch-free fold, so the common
/// (valid) case vectorises.
struct AllAdmitted(Bounds);

impl ChunkFold<bool> for AllAdmitted {
    #[inline(always)]
    fn fold(&self, chunk: &[f64]) -> bool {
        let mut ok = true;
        for &x in chunk {
            ok &= admitted(self.0, x);
        }
        ok
    }
}

/// Every element finite and within `range`; the error names the first bad index.
pub fn array(name: &str, values: &[f64], range: Range) -> CoreResult<()> {
    let bounds = range.bounds();
    if reduce_chunks(values, true, &AllAdmitted(bounds), |a, b| a & b) {
        return Ok(());
    }
    let index = values
        .iter()
        .position(|&x| !admitted(bounds, x))
        .unwrap_or_default();
    Err(describe(format!("{name}[{index}]"), values[index], range))
}

/// `values` describes the same rows as `reference`.
pub fn same_len(
    name: &'static str,
    values: &[f64],
    reference: &'static str,
    reference_values: &[f64],
) -> CoreResult<()> {
    if values.len() == reference_values.len() {
        Ok(())
    } else {
        Err(CoreError::LengthMismatch {
            name,
            len: values.len(),
            reference,
            reference_len: reference_values.len(),
        })
    }
}

/// A caller-provided output buffer has one slot per row.
pub fn output(out: &[f64], rows: &[f64]) -> CoreResult<()> {
    if out.len() == rows.len() {
        Ok(())
    } else {
        Err(CoreError::BadShape {
            name: "out",
            expected: format!("({},)", rows.len()),
            actual: format!("({},)", out.len()),
        })
    }
}

pub fn non_empty(name: &'static str, values: &[f64]) -> CoreResult<()> {
    if values.is_empty() {
        Err(CoreError::Empty { name })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::par::PAR_MIN_LEN;

    #[test]
    fn names_the_first_bad_element() {
        let err = array("s", &[1.0, 2.0, 0.5, 0.1], Range::AtLeastOne).unwrap_err();
        assert_eq!(err.to_string(), "s[2] must be >= 1, got 0.5");
        let err = array("t", &[1.0, f64::NAN], Range::Positive).unwrap_err();
        assert_eq!(err.to_string(), "t[1] must be finite, got nan");
    }

    #[test]
    fn long_arrays_take_the_parallel_path() {
        let mut values = vec![2.0; PAR_MIN_LEN + 5];
        assert!(array("s", &values, Range::AtLeastOne).is_ok());
        values[PAR_MIN_LEN + 1] = f64::INFINITY;
        let err = array("s", &values, Range::AtLeastOne).unwrap_err();
        assert_eq!(err.argument(), format!("s[{}]", PAR_MIN_LEN + 1));
    }
}
