//! SPEC 5.1: the integer search space of the decision.

use crate::check::{self, Range};
use crate::error::{CoreError, CoreResult};

/// Relative slack before rounding a bound to an integer. `p` is measured to a few
/// significant digits, so a target within 1e-9 relative of an integer *is* that integer:
/// `1.5 * (70/3)` evaluates to 35.000000000000004 and must give 35, not 36.
pub const ROUNDING_SLACK: f64 = 1e-9;

fn ceil_tolerant(x: f64) -> f64 {
    (x - ROUNDING_SLACK * x.abs()).ceil()
}

fn floor_tolerant(x: f64) -> f64 {
    (x + ROUNDING_SLACK * x.abs()).floor()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Cost,
    Efficiency,
}

impl Strategy {
    const CHOICES: &'static [&'static str] = &["cost", "efficiency"];

    pub fn parse(name: &str) -> CoreResult<Self> {
        match name {
            "cost" => Ok(Self::Cost),
            "efficiency" => Ok(Self::Efficiency),
            _ => Err(CoreError::UnknownChoice {
                name: "strategy",
                value: name.to_owned(),
                choices: Self::CHOICES,
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundRule {
    /// `[1, ceil(1.5 s*)]`
    Wide,
    /// `[1, ceil(1.2 s*)]`
    Tight,
    /// `[floor(0.5 s*), ceil(1.5 s*)]`
    Centered,
}

impl BoundRule {
    const CHOICES: &'static [&'static str] = &["wide", "tight", "centered"];

    pub fn parse(name: &str) -> CoreResult<Self> {
        match name {
            "wide" => Ok(Self::Wide),
            "tight" => Ok(Self::Tight),
            "centered" => Ok(Self::Centered),
            _ => Err(CoreError::UnknownChoice {
                name: "rule",
                value: name.to_owned(),
                choices: Self::CHOICES,
            }),
        }
    }
}

/// Everything `search_bounds` reads besides `p`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoundsConfig {
    pub strategy: Strategy,
    pub rule: BoundRule,
    /// `a` of the score `T^a s^b`.
    pub urgency: f64,
    /// `b` of the score.
    pub resource_exponent: f64,
    pub eta: f64,
    pub min_parallelism: i64,
    pub max_parallelism: i64,
}

impl BoundsConfig {
    pub fn validate(&self) -> CoreResult<()> {
        check::scalar("urgency", self.urgency, Range::Positive)?;
        check::scalar(
            "resource_exponent",
            self.resource_exponent,
            Range::NonNegative,
        )?;
        check::scalar("eta", self.eta, Range::UnitOpen)?;
        if self.min_parallelism < 1 {
            return Err(CoreError::IntOutOfRange {
                name: "min_parallelism",
                requirement: "must be >= 1".to_owned(),
                value: self.min_parallelism,
            });
        }
        if self.max_parallelism < self.min_parallelism {
            return Err(CoreError::IntOutOfRange {
                name: "max_parallelism",
                requirement: format!("must be >= min_parallelism ({})", self.min_parallelism),
                value: self.max_parallelism,
            });
        }
        Ok(())
    }
}

/// The cost strategy's target: the exact minimiser over real `s > 0` of
/// `((1 - p) + p / s)^a * s^b`, i.e. `(a / b - 1) * p / (1 - p)` when `a > b`; the
/// score grows with `s` when `a <= b` (target 1); `b = 0` leaves only time (unbounded).
fn cost_target(p: f64, a: f64, b: f64) -> f64 {
    if a <= b {
        1.0
    } else if p == 0.0 {
        0.0
    } else if b == 0.0 {
        f64::INFINITY
    } else {
        (a / b - 1.0) * (p / (1.0 - p))
    }
}

/// The raw `[lo, hi]` before clipping, as floats (`hi` may be infinite).
fn raw_bounds(p: f64, config: &BoundsConfig) -> (f64, f64) {
    if p >= 1.0 {
        // SPEC 5.1: p >= 1 means unbounded; the cap alone applies.
        return (1.0, f64::INFINITY);
    }
    match config.strategy {
        Strategy::Efficiency => {
            let s_eta = p / (1.0 - p) * (config.eta / (1.0 - config.eta));
            (1.0, ceil_tolerant(s_eta))
        }
        Strategy::Cost => {
            let target = cost_target(p, config.urgency, config.resource_exponent);
            if target.is_infinite() {
                return (1.0, f64::INFINITY);
            }
            match config.rule {
                BoundRule::Wide => (1.0, ceil_tolerant(1.5 * target)),
                BoundRule::Tight => (1.0, ceil_tolerant(1.2 * target)),
                BoundRule::Centered => (floor_tolerant(0.5 * target), ceil_tolerant(1.5 * target)),
            }
        }
    }
}

/// Clips a float bound (possibly huge or infinite) into `[lo, hi]`.
fn clip(x: f64, lo: i64, hi: i64) -> i64 {
    if x <= lo as f64 {
        lo
    } else if x >= hi as f64 {
        hi
    } else {
        x as i64
    }
}

/// SPEC 5.1: `(lo, hi)` with `min_parallelism <= lo <= hi <= max_parallelism`.
/// The upper bound is at least 1 before clipping (`p = 0` gives `[1, 1]`).
pub fn search_bounds(p: f64, config: &BoundsConfig) -> CoreResult<(i64, i64)> {
    let p = check::scalar("p", p, Range::Unit)?;
    config.validate()?;
    let (lo, hi) = raw_bounds(p, config);
    let (lo, hi) = (lo.max(1.0), hi.max(1.0));
    let (min, max) = (config.min_parallelism, config.max_parallelism);
    Ok((clip(lo, min, max), clip(hi, min, max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(strategy: Strategy, rule: BoundRule, max: i64) -> BoundsConfig {
        BoundsConfig {
            strategy,
            rule,
            urgency: 1.0,
            resource_exponent: 0.5,
            eta: 0.9,
            min_parallelism: 1,
            max_parallelism: max,
        }
    }

    #[test]
    fn worked_example_bounds_round_exactly() {
        // SPEC 7: p = 70/73 gives s* = 70/3 and s_eta = 210.
        let p = 1.0 - 82.0 / 292.0;
        let p = p * 4.0 / 3.0;
        let wide = search_bounds(p, &config(Strategy::Cost, BoundRule::Wide, 1000)).unwrap();
        assert_eq!(wide, (1, 35));
        let eff = search_bounds(p, &config(Strategy::Efficiency, BoundRule::Wide, 1000)).unwrap();
        assert_eq!(eff, (1, 210));
        let capped = search_bounds(p, &config(Strategy::Cost, BoundRule::Centered, 8)).unwrap();
        assert_eq!(capped, (8, 8));
    }

    #[test]
    fn serial_and_fully_parallel_extremes() {
        let wide = config(Strategy::Cost, BoundRule::Wide, 64);
        assert_eq!(search_bounds(0.0, &wide).unwrap(), (1, 1));
        assert_eq!(search_bounds(1.0, &wide).unwrap(), (1, 64));
        let err = Strategy::parse("fast").unwrap_err();
        assert_eq!(err.argument(), "strategy");
    }
}
