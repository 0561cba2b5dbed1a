//! SPEC 5.3-5.5: the expected score of each candidate and the choice among them.
//!
//! The prediction of a candidate is `P ~ Normal(mean, sd^2)` with negative values
//! clamped to 0 (SPEC 2's truncation at 0); its score is `J = E[P^a] * s^b`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::check::{self, Bounds, Range, UNCHECKED};
use crate::error::{CoreError, CoreResult};
use crate::fastmath::{per_lane, power_kind, with_power, Power, PowerKind};
use crate::normal::normal_quantile;
use crate::par::{fill3, reduce_rows, Block, Kernel3, RowFold, LANES};

/// Largest accepted quadrature size; beyond it the rule's weights underflow and nothing
/// is gained for a one-dimensional smooth expectation.
pub const MAX_NODES: usize = 256;

/// A Gauss-Hermite rule for `E[f(Z)]`, `Z` standard Normal:
/// `E[f(Z)] ~ sum_i weights[i] * f(nodes[i])`.
///
/// Built from the physicists' rule (weight `exp(-x^2)`, the one numpy's `hermgauss`
/// returns) with `nodes = sqrt(2) x_i` and `weights = w_i / sqrt(pi)`, i.e. normalised to
/// sum 1.
#[derive(Clone, Debug, PartialEq)]
pub struct HermiteRule {
    pub nodes: Vec<f64>,
    pub weights: Vec<f64>,
}

/// The orthonormal Hermite functions' polynomial parts `h_n(x)` and `h_{n-1}(x)`
/// (orthonormal under weight `exp(-x^2)`), by the three-term recurrence, which stays
/// far from overflow for `n <= MAX_NODES`.
fn hermite_pair(n: usize, x: f64) -> (f64, f64) {
    let mut previous = 0.0;
    let mut current = std::f64::consts::PI.powf(-0.25);
    for j in 0..n {
        let j = j as f64;
        let next = (2.0 / (j + 1.0)).sqrt() * x * current - (j / (j + 1.0)).sqrt() * previous;
        previous = current;
        current = next;
    }
    (current, previous)
}

/// The root of `h_n` in `[lo, hi]`, where `h_n` changes sign: Newton steps
/// (`h_n' = sqrt(2n) h_{n-1}`) kept inside a shrinking bracket, bisection otherwise.
fn refine_root(n: usize, mut lo: f64, mut hi: f64) -> f64 {
    let sign_lo = hermite_pair(n, lo).0.signum();
    let mut x = 0.5 * (lo + hi);
    for _ in 0..200 {
        let (value, below) = hermite_pair(n, x);
        if value == 0.0 {
            return x;
        }
        if value.signum() == sign_lo {
            lo = x;
        } else {
            hi = x;
        }
        let derivative = (2.0 * n as f64).sqrt() * below;
        let newton = x - value / derivative;
        let next = if newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        if (next - x).abs() <= 2.0 * f64::EPSILON * x.abs() {
            return next;
        }
        x = next;
    }
    x
}

/// Computes the `n`-point rule: positive roots are bracketed on a grid finer than a
/// quarter of the smallest root spacing (about `pi / sqrt(2n + 1)`, near the origin),
/// then refined; all roots lie below `sqrt(2n + 1)`. The Christoffel weight of root `x`
/// is `1 / (n h_{n-1}(x)^2)`.
fn build_rule(n: usize) -> HermiteRule {
    let step = 0.25 * std::f64::consts::PI / ((2 * n + 1) as f64).sqrt();
    let limit = ((2 * n + 1) as f64).sqrt() + step;
    let mut positive = Vec::with_capacity(n / 2);
    // For odd n, 0 is a root; start just beyond it so the scan only sees positive ones.
    let mut lo = if n % 2 == 1 { 0.5 * step } else { 0.0 };
    let mut value_lo = hermite_pair(n, lo).0;
    while positive.len() < n / 2 && lo < limit {
        let hi = lo + step;
        let value_hi = hermite_pair(n, hi).0;
        if value_hi == 0.0 {
            positive.push(hi);
        } else if value_lo.signum() != value_hi.signum() && value_lo != 0.0 {
            positive.push(refine_root(n, lo, hi));
        }
        lo = hi;
        value_lo = value_hi;
    }
    debug_assert_eq!(positive.len(), n / 2, "every positive root bracketed");
    let mut roots: Vec<f64> = positive.iter().rev().map(|x| -x).collect();
    if n % 2 == 1 {
        roots.push(0.0);
    }
    roots.extend(&positive);
    let raw: Vec<f64> = roots
        .iter()
        .map(|&x| 1.0 / (n as f64 * hermite_pair(n, x).1.powi(2)))
        .collect();
    let total: f64 = raw.iter().sum();
    HermiteRule {
        nodes: roots.iter().map(|x| x * std::f64::consts::SQRT_2).collect(),
        weights: raw.iter().map(|w| w / total).collect(),
    }
}

/// The `n`-point rule, built once per size and shared.
pub fn hermite_rule(n: usize) -> Arc<HermiteRule> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<HermiteRule>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // A poisoned lock only means another thread panicked mid-insert of a pure value;
    // the map itself is still consistent.
    let mut guard = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(guard.entry(n).or_insert_with(|| Arc::new(build_rule(n))))
}

/// Options of the score `J = E[P^a] s^b`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreConfig {
    /// `a`: 0.5 saves money, 1 balances, 2 saves time.
    pub urgency: f64,
    /// `b`: how the cost grows with the width.
    pub resource_exponent: f64,
    /// Gauss-Hermite nodes for `a != 1`.
    pub nodes: usize,
}

impl ScoreConfig {
    fn validate(&self) -> CoreResult<()> {
        check::scalar("urgency", self.urgency, Range::Positive)?;
        check::scalar(
            "resource_exponent",
            self.resource_exponent,
            Range::NonNegative,
        )?;
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(CoreError::IntOutOfRange {
                name: "nodes",
                requirement: format!("must be in [1, {MAX_NODES}]"),
                value: i64::try_from(self.nodes).unwrap_or(i64::MAX),
            });
        }
        Ok(())
    }
}

fn candidates(s: &[f64], mean: &[f64], sd: &[f64]) -> CoreResult<()> {
    check::same_len("mean", mean, "s", s)?;
    check::same_len("sd", sd, "s", s)?;
    check::array("s", s, Range::AtLeastOne)?;
    check::array("mean", mean, Range::Any)?;
    check::array("sd", sd, Range::NonNegative)
}

#[inline]
fn positive_power(x: f64, a: f64) -> f64 {
    if x <= 0.0 {
        0.0
    } else if a == 2.0 {
        x * x
    } else if a == 0.5 {
        x.sqrt()
    } else {
        x.powf(a)
    }
}

/// `E[max(X, 0)^a]` for `X ~ Normal(mean, sd^2)`; exact when `sd == 0`.
fn expected_power(mean: f64, sd: f64, a: f64, rule: &HermiteRule) -> f64 {
    if sd == 0.0 {
        return positive_power(mean, a);
    }
    rule.nodes
        .iter()
        .zip(&rule.weights)
        .map(|(&z, &w)| w * positive_power(mean + sd * z, a))
        .sum()
}

/// Fills `out` with the scores, validating `s`, `mean` and `sd` in the same pass (see
/// `amdahl::amdahl_time_into` for the fallback).
fn scores_into(
    s: &[f64],
    mean: &[f64],
    sd: &[f64],
    config: &ScoreConfig,
    out: &mut [f64],
) -> CoreResult<()> {
    check::same_len("mean", mean, "s", s)?;
    check::same_len("sd", sd, "s", s)?;
    check::output(out, s)?;
    config.validate()?;
    let kind = power_kind(config.resource_exponent);
    let bounds = [
        kind.base_bounds(Range::AtLeastOne),
        Range::Any.bounds(),
        Range::NonNegative.bounds(),
    ];
    if !fill_scores(s, mean, sd, config, kind, bounds, out) {
        candidates(s, mean, sd)?;
        fill_scores(s, mean, sd, config, PowerKind::Libm, [UNCHECKED; 3], out);
    }
    Ok(())
}

fn fill_scores(
    s: &[f64],
    mean: &[f64],
    sd: &[f64],
    config: &ScoreConfig,
    kind: PowerKind,
    bounds: [Bounds; 3],
    out: &mut [f64],
) -> bool {
    let (a, b) = (config.urgency, config.resource_exponent);
    with_power!(kind, b, |power| if a == 1.0 {
        // E[max(P, 0)] is max(mean, 0) for the clamped prediction (SPEC 5.3: at a = 1
        // only the mean matters); no quadrature. `sd` is read only to validate it.
        fill3(out, s, mean, sd, bounds, &MeanScore { power })
    } else {
        let rule = hermite_rule(config.nodes);
        let kernel = QuadratureScore {
            power,
            a,
            rule: &rule,
        };
        fill3(out, s, mean, sd, bounds, &kernel)
    })
}

struct MeanScore<P> {
    power: P,
}

impl<P: Power> Kernel3 for MeanScore<P> {
    #[inline(always)]
    fn apply(&self, s: Block, mean: Block, _sd: Block) -> Block {
        let cost = self.power.pow(s);
        per_lane!(LANES, |i| mean[i].max(0.0) * cost[i])
    }
}

struct QuadratureScore<'a, P> {
    power: P,
    a: f64,
    rule: &'a HermiteRule,
}

impl<P: Power> Kernel3 for QuadratureScore<'_, P> {
    #[inline(always)]
    fn apply(&self, s: Block, mean: Block, sd: Block) -> Block {
        let cost = self.power.pow(s);
        per_lane!(LANES, |i| expected_power(mean[i], sd[i], self.a, self.rule)
            * cost[i])
    }
}

/// SPEC 5.3: `J = E[P^a] * s^b` per candidate, shape (n,).
pub fn expected_score(
    s: &[f64],
    mean: &[f64],
    sd: &[f64],
    config: &ScoreConfig,
) -> CoreResult<Vec<f64>> {
    let mut out = vec![0.0; s.len()];
    expected_score_into(s, mean, sd, config, &mut out)?;
    Ok(out)
}

/// [`expected_score`] into `out`, shape (n,).
pub fn expected_score_into(
    s: &[f64],
    mean: &[f64],
    sd: &[f64],
    config: &ScoreConfig,
    out: &mut [f64],
) -> CoreResult<()> {
    scores_into(s, mean, sd, config, out)
}

/// The optional constraint of SPEC 5.4 and the tie rule of 5.5.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChoiceRule {
    /// Deadline `D` in seconds, if any.
    pub deadline: Option<f64>,
    /// Probability `q` with which the deadline must hold.
    pub confidence: f64,
    /// Relative score difference treated as a tie.
    pub tie_tolerance: f64,
}

/// The outcome of [`choose`].
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// Row of the chosen candidate in the input arrays.
    pub index: usize,
    /// The score of every row, shape (n,).
    pub scores: Vec<f64>,
    /// False when no candidate meets the deadline and the fastest was taken instead.
    pub deadline_met: bool,
}

/// SPEC 5.3-5.5: scores every candidate, keeps those meeting the deadline (when given:
/// `mean + z_q sd <= D`) and picks the smallest `s` whose score is within
/// `tie_tolerance` (relative) of the best kept score; equal `s` go to the earlier row.
/// When no candidate meets the deadline, the one with the smallest mean (then smallest
/// `s`, earlier row) is chosen.
pub fn choose(
    s: &[f64],
    mean: &[f64],
    sd: &[f64],
    config: &ScoreConfig,
    rule: &ChoiceRule,
) -> CoreResult<Choice> {
    let mut scores = vec![0.0; s.len()];
    let (index, deadline_met) = choose_into(s, mean, sd, config, rule, &mut scores)?;
    Ok(Choice {
        index,
        scores,
        deadline_met,
    })
}

/// [`choose`] writing the scores into `scores`; returns `(index, deadline_met)`.
pub fn choose_into(
    s: &[f64],
    mean: &[f64],
    sd: &[f64],
    config: &ScoreConfig,
    rule: &ChoiceRule,
    scores: &mut [f64],
) -> CoreResult<(usize, bool)> {
    check::non_empty("s", s)?;
    config.validate()?;
    if let Some(seconds) = rule.deadline {
        check::scalar("deadline", seconds, Range::Positive)?;
    }
    let confidence = check::scalar("confidence", rule.confidence, Range::UnitOpen)?;
    let tie_tolerance = check::scalar("tie_tolerance", rule.tie_tolerance, Range::NonNegative)?;
    scores_into(s, mean, sd, config, scores)?;
    let deadline = match rule.deadline {
        Some(seconds) => Some((normal_quantile(confidence)?, seconds)),
        None => None,
    };
    let table = Table {
        s,
        mean,
        sd,
        scores,
        deadline,
    };
    let (any_kept, best) = reduce_rows(
        s.len(),
        (false, f64::INFINITY),
        &BestKept(&table),
        |a, b| (a.0 | b.0, a.1.min(b.1)),
    );
    if !any_kept {
        return Ok((table.fastest(), false));
    }
    let threshold = best * (1.0 + tie_tolerance);
    Ok((table.smallest_near_best(threshold), true))
}

/// The candidate table `choose` ranks; `deadline` is `(z_q, D)` when one applies.
struct Table<'a> {
    s: &'a [f64],
    mean: &'a [f64],
    sd: &'a [f64],
    scores: &'a [f64],
    deadline: Option<(f64, f64)>,
}

impl Table<'_> {
    /// SPEC 5.4: `mean + z_q sd <= D`.
    fn kept(&self, i: usize) -> bool {
        match self.deadline {
            None => true,
            Some((z, seconds)) => self.mean[i] + z * self.sd[i] <= seconds,
        }
    }

    /// Kept rows scoring within `threshold`: the smallest `s`, then the earliest row.
    fn smallest_near_best(&self, threshold: f64) -> usize {
        let narrowest = reduce_rows(
            self.s.len(),
            f64::INFINITY,
            &NarrowestNear(self, threshold),
            f64::min,
        );
        let found = (0..self.s.len())
            .find(|&i| self.kept(i) && self.scores[i] <= threshold && self.s[i] == narrowest);
        // Only missed when every kept score is NaN (0 * inf from an overflowing s^b):
        // no score ranks the rows, so the first kept row stands.
        found
            .or_else(|| (0..self.s.len()).find(|&i| self.kept(i)))
            .unwrap_or(0)
    }

    /// The smallest mean, then the smallest `s`, then the earliest row.
    fn fastest(&self) -> usize {
        let quickest = reduce_rows(self.s.len(), f64::INFINITY, &Quickest(self.mean), f64::min);
        let narrowest = reduce_rows(
            self.s.len(),
            f64::INFINITY,
            &NarrowestAt(self, quickest),
            f64::min,
        );
        (0..self.s.len())
            .find(|&i| self.mean[i] == quickest && self.s[i] == narrowest)
            .unwrap_or(0)
    }
}

/// Per rows: (any kept, the smallest kept score).
struct BestKept<'a>(&'a Table<'a>);

impl RowFold<(bool, f64)> for BestKept<'_> {
    #[inline(always)]
    fn fold(&self, rows: std::ops::Range<usize>) -> (bool, f64) {
        let table = self.0;
        let scores = &table.scores[rows.clone()];
        let (mut any, mut best) = (false, f64::INFINITY);
        // Selects rather than branches, and slices rather than indices, so the loops
        // vectorise.
        match table.deadline {
            None => {
                any = !scores.is_empty();
                for &score in scores {
                    best = if score < best { score } else { best };
                }
            }
            Some((z, seconds)) => {
                let (mean, sd) = (&table.mean[rows.clone()], &table.sd[rows]);
                for ((&score, &m), &d) in scores.iter().zip(mean).zip(sd) {
                    let kept = m + z * d <= seconds;
                    let score = if kept { score } else { f64::INFINITY };
                    any |= kept;
                    best = if score < best { score } else { best };
                }
            }
        }
        (any, best)
    }
}

/// Per rows: the smallest `s` among kept rows scoring within the threshold.
struct NarrowestNear<'a>(&'a Table<'a>, f64);

impl RowFold<f64> for NarrowestNear<'_> {
    #[inline(always)]
    fn fold(&self, rows: std::ops::Range<usize>) -> f64 {
        let (table, threshold) = (self.0, self.1);
        let (s, scores) = (&table.s[rows.clone()], &table.scores[rows.clone()]);
        let mut narrowest = f64::INFINITY;
        match table.deadline {
            None => {
                for (&width, &score) in s.iter().zip(scores) {
                    let width = if score <= threshold {
                        width
                    } else {
                        f64::INFINITY
                    };
                    narrowest = if width < narrowest { width } else { narrowest };
                }
            }
            Some((z, seconds)) => {
                let (mean, sd) = (&table.mean[rows.clone()], &table.sd[rows]);
                for (((&width, &score), &m), &d) in s.iter().zip(scores).zip(mean).zip(sd) {
                    let near = (m + z * d <= seconds) & (score <= threshold);
                    let width = if near { width } else { f64::INFINITY };
                    narrowest = if width < narrowest { width } else { narrowest };
                }
            }
        }
        narrowest
    }
}

/// Per rows: the smallest mean.
struct Quickest<'a>(&'a [f64]);

impl RowFold<f64> for Quickest<'_> {
    #[inline(always)]
    fn fold(&self, rows: std::ops::Range<usize>) -> f64 {
        let mut quickest = f64::INFINITY;
        for &m in &self.0[rows] {
            quickest = if m < quickest { m } else { quickest };
        }
        quickest
    }
}

/// Per rows: the smallest `s` among rows whose mean equals the given one.
struct NarrowestAt<'a>(&'a Table<'a>, f64);

impl RowFold<f64> for NarrowestAt<'_> {
    #[inline(always)]
    fn fold(&self, rows: std::ops::Range<usize>) -> f64 {
        let mut narrowest = f64::INFINITY;
        for (&m, &s) in self.0.mean[rows.clone()].iter().zip(&self.0.s[rows]) {
            let width = if m == self.1 { s } else { f64::INFINITY };
            narrowest = if width < narrowest { width } else { narrowest };
        }
        narrowest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hermite_rules_integrate_normal_moments() {
        for n in [1, 2, 3, 4, 5, 10, 31, 32, 33, 100, MAX_NODES] {
            let rule = hermite_rule(n);
            assert_eq!(rule.nodes.len(), n);
            let moment = |k: i32| -> f64 {
                rule.nodes
                    .iter()
                    .zip(&rule.weights)
                    .map(|(z, w)| w * z.powi(k))
                    .sum()
            };
            assert!((moment(0) - 1.0).abs() < 1e-13, "n = {n}");
            if n >= 2 {
                assert!((moment(2) - 1.0).abs() < 1e-12, "n = {n}: {}", moment(2));
            }
            if n >= 3 {
                assert!((moment(4) - 3.0).abs() < 1e-11, "n = {n}: {}", moment(4));
            }
        }
    }

    #[test]
    fn ties_go_to_the_smaller_width() {
        let config = ScoreConfig {
            urgency: 1.0,
            resource_exponent: 0.5,
            nodes: 32,
        };
        // Scores 100, 99.8, 120 (s = 1, 4 and 9): 1 is within 0.5 % of the best.
        let s = [4.0, 1.0, 9.0];
        let mean = [49.9, 100.0, 40.0];
        let mut rule = ChoiceRule {
            deadline: None,
            confidence: 0.9,
            tie_tolerance: 0.005,
        };
        let choice = choose(&s, &mean, &[0.0; 3], &config, &rule).unwrap();
        assert_eq!(choice.index, 1);
        rule.tie_tolerance = 0.0;
        let strict = choose(&s, &mean, &[0.0; 3], &config, &rule).unwrap();
        assert_eq!(strict.index, 0);
    }

    #[test]
    fn unreachable_deadline_takes_the_fastest() {
        let config = ScoreConfig {
            urgency: 1.0,
            resource_exponent: 0.5,
            nodes: 32,
        };
        let choice = choose(
            &[1.0, 2.0, 3.0],
            &[90.0, 60.0, 50.0],
            &[5.0; 3],
            &config,
            &ChoiceRule {
                deadline: Some(10.0),
                confidence: 0.9,
                tie_tolerance: 0.005,
            },
        )
        .unwrap();
        assert_eq!((choice.index, choice.deadline_met), (2, false));
    }
}
