//! The Amdahl part of the time model (SPEC 2) and the parameter updates that invert it
//! (SPEC 3, 4.3-4.5). Arrays are per-row: `s`, `gamma`, `t` of equal length.

use crate::check::{self, Range, UNCHECKED};
use crate::error::CoreResult;
use crate::fastmath::{per_lane, power_kind, with_power, PowLibm, Power};
use crate::par::{fill2, fill3, Block, Kernel2, Kernel3, LANES};

/// A work time `t - c` is floored at this fraction of `t`, so a start-up overhead
/// larger than a run cannot give a negative or zero work time (whose log or inverse
/// would be meaningless).
pub const WORK_FLOOR: f64 = 1e-3;

#[inline(always)]
fn work_time(t: f64, c: f64) -> f64 {
    (t - c).max(WORK_FLOOR * t)
}

/// Parameters of `T_A = c + gamma^k * t1 * ((1 - p) + p / s)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Amdahl {
    pub t1: f64,
    pub p: f64,
    pub c: f64,
    pub k: f64,
}

impl Amdahl {
    pub fn new(t1: f64, p: f64, c: f64, k: f64) -> CoreResult<Self> {
        Ok(Self {
            t1: check::scalar("t1", t1, Range::Positive)?,
            p: check::scalar("p", p, Range::Unit)?,
            c: check::scalar("c", c, Range::NonNegative)?,
            k: check::scalar("k", k, Range::Exponent)?,
        })
    }
}

fn rows(s: &[f64], s_range: Range, gamma: &[f64], t: Option<&[f64]>) -> CoreResult<()> {
    check::same_len("gamma", gamma, "s", s)?;
    if let Some(t) = t {
        check::same_len("t", t, "s", s)?;
    }
    check::array("s", s, s_range)?;
    check::array("gamma", gamma, Range::Positive)?;
    if let Some(t) = t {
        check::array("t", t, Range::Positive)?;
    }
    Ok(())
}

/// SPEC 2: `T_A(s, gamma)` per row, shape (n,).
pub fn amdahl_time(s: &[f64], gamma: &[f64], model: Amdahl) -> CoreResult<Vec<f64>> {
    let mut out = vec![0.0; s.len()];
    amdahl_time_into(s, gamma, model, &mut out)?;
    Ok(out)
}

/// [`amdahl_time`] into `out`, shape (n,).
///
/// One pass computes and validates together; when it reports a problem, either an
/// input is invalid (the precise error comes from a second, checking pass) or a size
/// lies outside the fast power's range, and the batch is recomputed with libm.
pub fn amdahl_time_into(
    s: &[f64],
    gamma: &[f64],
    model: Amdahl,
    out: &mut [f64],
) -> CoreResult<()> {
    check::same_len("gamma", gamma, "s", s)?;
    check::output(out, s)?;
    let kind = power_kind(model.k);
    let bounds = [
        Range::AtLeastOne.bounds(),
        kind.base_bounds(Range::Positive),
    ];
    let fused = with_power!(kind, model.k, |power| fill2(
        out,
        s,
        gamma,
        bounds,
        &AmdahlKernel { model, power }
    ));
    if !fused {
        rows(s, Range::AtLeastOne, gamma, None)?;
        let power = PowLibm(model.k);
        fill2(
            out,
            s,
            gamma,
            [UNCHECKED; 2],
            &AmdahlKernel { model, power },
        );
    }
    Ok(())
}

struct AmdahlKernel<P> {
    model: Amdahl,
    power: P,
}

impl<P: Power> Kernel2 for AmdahlKernel<P> {
    #[inline(always)]
    fn apply(&self, s: Block, gamma: Block) -> Block {
        let Amdahl { t1, p, c, .. } = self.model;
        let scale = self.power.pow(gamma);
        per_lane!(LANES, |i| c + scale[i] * t1 * ((1.0 - p) + p / s[i]))
    }
}

/// SPEC 3 / 4.5: the parallel fraction each run implies,
/// `s / (s - 1) * (1 - (t - c) / (gamma^k * t1))` clipped to [0, 1], shape (n,).
/// Needs `s > 1`: a run at `s = 1` says nothing about `p`.
pub fn p_current(s: &[f64], gamma: &[f64], t: &[f64], model: Amdahl) -> CoreResult<Vec<f64>> {
    let mut out = vec![0.0; s.len()];
    p_current_into(s, gamma, t, model, &mut out)?;
    Ok(out)
}

/// [`p_current`] into `out`, shape (n,); validated in the same pass as
/// [`amdahl_time_into`].
pub fn p_current_into(
    s: &[f64],
    gamma: &[f64],
    t: &[f64],
    model: Amdahl,
    out: &mut [f64],
) -> CoreResult<()> {
    check::same_len("gamma", gamma, "s", s)?;
    check::same_len("t", t, "s", s)?;
    check::output(out, s)?;
    let kind = power_kind(model.k);
    let bounds = [
        Range::AboveOne.bounds(),
        kind.base_bounds(Range::Positive),
        Range::Positive.bounds(),
    ];
    let fused = with_power!(kind, model.k, |power| fill3(
        out,
        s,
        gamma,
        t,
        bounds,
        &PCurrentKernel { model, power }
    ));
    if !fused {
        rows(s, Range::AboveOne, gamma, Some(t))?;
        let power = PowLibm(model.k);
        fill3(
            out,
            s,
            gamma,
            t,
            [UNCHECKED; 3],
            &PCurrentKernel { model, power },
        );
    }
    Ok(())
}

struct PCurrentKernel<P> {
    model: Amdahl,
    power: P,
}

impl<P: Power> Kernel3 for PCurrentKernel<P> {
    #[inline(always)]
    fn apply(&self, s: Block, gamma: Block, t: Block) -> Block {
        let Amdahl { t1, c, .. } = self.model;
        let scale = self.power.pow(gamma);
        per_lane!(LANES, |i| {
            let implied = s[i] / (s[i] - 1.0) * (1.0 - work_time(t[i], c) / (scale[i] * t1));
            implied.clamp(0.0, 1.0)
        })
    }
}

/// SPEC 4.5: the moving average `p <- alpha p + (1 - alpha) p_cur[i]` replayed oldest
/// first, starting from `p_cur[0]`.
pub fn replay_p(p_cur: &[f64], alpha: f64) -> CoreResult<f64> {
    check::non_empty("p_cur", p_cur)?;
    check::array("p_cur", p_cur, Range::Unit)?;
    let alpha = check::scalar("alpha", alpha, Range::UnitLeftOpen)?;
    Ok(p_cur[1..]
        .iter()
        .fold(p_cur[0], |p, &current| alpha * p + (1.0 - alpha) * current))
}

/// Sums of the within-`s` regression of `ln(t - c)` on `ln gamma` (SPEC 4.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WithinGroupFit {
    /// Sum over rows of the squared deviation of `ln gamma` from its group mean.
    pub spread: f64,
    /// Sum over rows of the product of the centred `ln gamma` and `ln(t - c)`.
    pub covariation: f64,
}

/// A within-group spread of `ln gamma` below this is rounding noise (sizes equal to
/// the last few bits), not information about `k`.
pub const SPREAD_NOISE: f64 = 1e-12;

/// Mean of `values[i]` over `rows`, shifted by the first value so that a group of
/// identical values has exactly that value as its mean (and deviations exactly 0).
fn shifted_mean(values: &[f64], rows: &[usize]) -> f64 {
    let first = values[rows[0]];
    first + rows.iter().map(|&i| values[i] - first).sum::<f64>() / rows.len() as f64
}

/// Groups rows by exact `s` and centres `ln gamma` and `ln(t - c)` within each group.
pub fn within_group_fit(s: &[f64], gamma: &[f64], t: &[f64], c: f64) -> WithinGroupFit {
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
    let log_gamma: Vec<f64> = gamma.iter().map(|g| g.ln()).collect();
    let log_work: Vec<f64> = t.iter().map(|&t| work_time(t, c).ln()).collect();
    let mut fit = WithinGroupFit {
        spread: 0.0,
        covariation: 0.0,
    };
    for group in order.chunk_by(|&a, &b| s[a] == s[b]) {
        let mean_x = shifted_mean(&log_gamma, group);
        let mean_y = shifted_mean(&log_work, group);
        for &i in group {
            let dx = log_gamma[i] - mean_x;
            fit.spread += dx * dx;
            fit.covariation += dx * (log_work[i] - mean_y);
        }
    }
    fit
}

/// SPEC 4.3: the least-squares `k` of `ln(t - c) = k ln gamma + a_(s)`, clipped to
/// [0, 3]; `None` when the within-group spread of `ln gamma` is below `min_spread` (or
/// below [`SPREAD_NOISE`]), i.e. the window cannot tell `k` apart from the intercepts.
pub fn fit_k(
    s: &[f64],
    gamma: &[f64],
    t: &[f64],
    c: f64,
    min_spread: f64,
) -> CoreResult<Option<f64>> {
    rows(s, Range::AtLeastOne, gamma, Some(t))?;
    let c = check::scalar("c", c, Range::NonNegative)?;
    let min_spread = check::scalar("min_spread", min_spread, Range::NonNegative)?;
    let fit = within_group_fit(s, gamma, t, c);
    if fit.spread < min_spread.max(SPREAD_NOISE) {
        return Ok(None);
    }
    Ok(Some((fit.covariation / fit.spread).clamp(0.0, 3.0)))
}

/// SPEC 4.4: the mean of `(t - c) / gamma^k` over rows with `s == 1`; `None` without
/// such rows.
pub fn baseline_t1(s: &[f64], gamma: &[f64], t: &[f64], c: f64, k: f64) -> CoreResult<Option<f64>> {
    rows(s, Range::AtLeastOne, gamma, Some(t))?;
    let c = check::scalar("c", c, Range::NonNegative)?;
    let k = check::scalar("k", k, Range::Exponent)?;
    let (sum, count) = s
        .iter()
        .zip(gamma)
        .zip(t)
        .filter(|((&s, _), _)| s == 1.0)
        .fold((0.0, 0_usize), |(sum, count), ((_, &g), &t)| {
            (sum + work_time(t, c) / g.powf(k), count + 1)
        });
    Ok((count > 0).then(|| sum / count as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_individuals() {
        // SPEC 7: T1 = 292 and one run at s = 4 taking 82 s.
        let p0 = p_current(
            &[4.0],
            &[1.0],
            &[82.0],
            Amdahl::new(292.0, 0.0, 0.0, 1.0).unwrap(),
        )
        .unwrap()[0];
        assert!((p0 - 0.959).abs() < 5e-4);
        let model = Amdahl::new(292.0, p0, 0.0, 1.0).unwrap();
        let times = amdahl_time(&[4.0], &[1.0], model).unwrap();
        assert!(
            (times[0] - 82.0).abs() < 1e-9,
            "p_current inverts amdahl_time"
        );
    }

    #[test]
    fn fit_k_recovers_the_exponent_despite_per_s_offsets() {
        let s = [2.0, 2.0, 2.0, 8.0, 8.0, 8.0];
        let gamma: [f64; 6] = [0.5, 1.0, 2.0, 0.5, 1.0, 2.0];
        let t: Vec<f64> = s
            .iter()
            .zip(&gamma)
            .map(|(&s, &g)| g.powf(1.4) * 100.0 * (0.1 + 0.9 / s))
            .collect();
        let k = fit_k(&s, &gamma, &t, 0.0, 0.05).unwrap().unwrap();
        assert!((k - 1.4).abs() < 1e-12);
        assert_eq!(fit_k(&s, &[1.0; 6], &t, 0.0, 0.05).unwrap(), None);
    }

    #[test]
    fn rejects_bad_rows_by_name() {
        let model = Amdahl::new(10.0, 0.5, 0.0, 1.0).unwrap();
        let err = amdahl_time(&[1.0, 2.0], &[1.0], model).unwrap_err();
        assert_eq!(err.argument(), "gamma");
        let err = p_current(&[2.0, 1.0], &[1.0, 1.0], &[5.0, 5.0], model).unwrap_err();
        assert_eq!(err.to_string(), "s[1] must be > 1, got 1.0");
        assert_eq!(
            Amdahl::new(10.0, 1.5, 0.0, 1.0).unwrap_err().argument(),
            "p"
        );
    }
}
