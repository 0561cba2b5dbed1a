//! The serve-time posterior of the residual Gaussian process (SPEC 2).
//!
//! Fitting stays in scikit-learn (`GaussianProcessRegressor`, kernel
//! `ConstantKernel * RBF(3 length scales) + WhiteKernel`, `normalize_y=True`); this
//! module evaluates the fitted posterior the way sklearn's `predict(return_std=True)`
//! does, for raw candidates `(s, gamma, load)`:
//!
//! - features `x = (ln s, ln gamma, ln(1 + load))`, standardised `(x - x_mean) / x_scale`;
//! - `k_j = constant * exp(-|(x - x_j) / l|^2 / 2)` against each training row `x_j`;
//! - mean `y_mean + y_scale * k . alpha`;
//! - `v = L^-1 k`, variance `(constant + noise - |v|^2)` clipped at 0, times `y_scale^2`.
//!
//! Candidates are processed in blocks of `BLOCK`, so each step of the triangular solve
//! updates several candidates with one vector operation.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::check::{self, Range};
use crate::error::{CoreError, CoreResult};
use crate::fastmath::{self, per_lane};
use crate::par::simd;

const FEATURES: usize = 3;
const BLOCK: usize = fastmath::LANES;
/// Candidates per parallel task; below `2 * TASK` candidates the pool is not used.
const TASK: usize = 512;

/// Borrowed arrays describing a fitted posterior; matrices are row-major.
#[derive(Clone, Copy, Debug)]
pub struct GpParts<'a> {
    /// Standardised training features as sklearn saw them, shape `x_train_shape` = (n, 3).
    pub x_train: &'a [f64],
    pub x_train_shape: (usize, usize),
    /// `gpr.alpha_`, shape (n,).
    pub alpha: &'a [f64],
    /// `gpr.L_`, lower Cholesky factor of the training kernel matrix, shape (n, n).
    pub chol: &'a [f64],
    pub chol_shape: (usize, usize),
    pub constant: f64,
    /// RBF length scales, shape (3,).
    pub length_scales: &'a [f64],
    pub noise: f64,
    /// Feature standardisation, shape (3,) each.
    pub x_mean: &'a [f64],
    pub x_scale: &'a [f64],
    pub y_mean: f64,
    pub y_scale: f64,
}

#[derive(Clone, Debug)]
pub struct GpPosterior {
    n: usize,
    /// Training features divided by the length scales, shape (n,).
    train: Vec<[f64; FEATURES]>,
    alpha: Vec<f64>,
    /// Strictly lower part of `L` packed by rows: row `i` holds `L[i][0..i]`.
    lower: Vec<f64>,
    diagonal: Vec<f64>,
    constant: f64,
    prior_variance: f64,
    x_mean: [f64; FEATURES],
    x_scale: [f64; FEATURES],
    length_scales: [f64; FEATURES],
    y_mean: f64,
    y_scale: f64,
}

fn vector3(name: &'static str, values: &[f64], range: Range) -> CoreResult<[f64; FEATURES]> {
    let fixed: [f64; FEATURES] = values.try_into().map_err(|_| CoreError::BadShape {
        name,
        expected: format!("({FEATURES},)"),
        actual: format!("({},)", values.len()),
    })?;
    check::array(name, values, range)?;
    Ok(fixed)
}

fn shape(
    name: &'static str,
    actual: (usize, usize),
    expected: (usize, usize),
    expected_text: &str,
) -> CoreResult<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(CoreError::BadShape {
            name,
            expected: expected_text.to_owned(),
            actual: format!("({}, {})", actual.0, actual.1),
        })
    }
}

impl GpPosterior {
    pub fn new(parts: &GpParts<'_>) -> CoreResult<Self> {
        let n = parts.x_train_shape.0;
        if n == 0 {
            return Err(CoreError::Empty { name: "x_train" });
        }
        shape(
            "x_train",
            parts.x_train_shape,
            (n, FEATURES),
            &format!("(n, {FEATURES})"),
        )?;
        check::array("x_train", parts.x_train, Range::Any)?;
        if parts.alpha.len() != n {
            return Err(CoreError::BadShape {
                name: "alpha",
                expected: format!("({n},) like x_train's rows"),
                actual: format!("({},)", parts.alpha.len()),
            });
        }
        check::array("alpha", parts.alpha, Range::Any)?;
        shape(
            "chol",
            parts.chol_shape,
            (n, n),
            &format!("({n}, {n}) like x_train's rows"),
        )?;
        let mut lower = Vec::with_capacity(n * (n - 1) / 2);
        let mut diagonal = Vec::with_capacity(n);
        for i in 0..n {
            let row = &parts.chol[i * n..=i * n + i];
            if let Some(j) = row[..i].iter().position(|x| !x.is_finite()) {
                return Err(CoreError::NotFinite {
                    name: format!("chol[{i}, {j}]"),
                    value: row[j],
                });
            }
            check::scalar(&format!("chol[{i}, {i}]"), row[i], Range::Positive)?;
            lower.extend_from_slice(&row[..i]);
            diagonal.push(row[i]);
        }
        let length_scales = vector3("length_scales", parts.length_scales, Range::Positive)?;
        let train = parts
            .x_train
            .chunks_exact(FEATURES)
            .map(|row| std::array::from_fn(|d| row[d] / length_scales[d]))
            .collect();
        let constant = check::scalar("constant", parts.constant, Range::Positive)?;
        let noise = check::scalar("noise", parts.noise, Range::NonNegative)?;
        Ok(Self {
            n,
            train,
            alpha: parts.alpha.to_vec(),
            lower,
            diagonal,
            constant,
            prior_variance: constant + noise,
            x_mean: vector3("x_mean", parts.x_mean, Range::Any)?,
            x_scale: vector3("x_scale", parts.x_scale, Range::Positive)?,
            length_scales,
            y_mean: check::scalar("y_mean", parts.y_mean, Range::Any)?,
            y_scale: check::scalar("y_scale", parts.y_scale, Range::Positive)?,
        })
    }

    pub fn n_train(&self) -> usize {
        self.n
    }

    /// Residual mean and standard deviation in seconds for raw candidates, shape (m,)
    /// each.
    pub fn predict(
        &self,
        s: &[f64],
        gamma: &[f64],
        load: &[f64],
    ) -> CoreResult<(Vec<f64>, Vec<f64>)> {
        let mut mean = vec![0.0; s.len()];
        let mut sd = vec![0.0; s.len()];
        self.predict_into(s, gamma, load, &mut mean, &mut sd)?;
        Ok((mean, sd))
    }

    /// [`GpPosterior::predict`] into `mean` and `sd`, shape (m,) each.
    pub fn predict_into(
        &self,
        s: &[f64],
        gamma: &[f64],
        load: &[f64],
        mean: &mut [f64],
        sd: &mut [f64],
    ) -> CoreResult<()> {
        check::same_len("gamma", gamma, "s", s)?;
        check::same_len("load", load, "s", s)?;
        check::array("s", s, Range::AtLeastOne)?;
        check::array("gamma", gamma, Range::Positive)?;
        check::array("load", load, Range::NonNegative)?;
        check::output(mean, s)?;
        check::output(sd, s)?;
        let run = |start: usize, mean: &mut [f64], sd: &mut [f64]| {
            let end = start + mean.len();
            simd(PredictRows {
                gp: self,
                s: &s[start..end],
                gamma: &gamma[start..end],
                load: &load[start..end],
                mean,
                sd,
            });
        };
        if s.len() >= 2 * TASK {
            mean.par_chunks_mut(TASK)
                .zip(sd.par_chunks_mut(TASK))
                .enumerate()
                .for_each(|(task, (mean, sd))| run(task * TASK, mean, sd));
        } else {
            run(0, mean, sd);
        }
        Ok(())
    }

    /// Standardised, length-scaled features of a block of candidates, one array of
    /// `BLOCK` lanes per feature.
    #[inline(always)]
    fn features(
        &self,
        s: [f64; BLOCK],
        gamma: [f64; BLOCK],
        load: [f64; BLOCK],
    ) -> [[f64; BLOCK]; FEATURES] {
        let mut normal = true;
        for g in gamma {
            normal &= g >= f64::MIN_POSITIVE;
        }
        let log_gamma = if normal {
            fastmath::ln_lanes(gamma)
        } else {
            // Subnormal sizes are outside the fast logarithm's range.
            per_lane!(BLOCK, |b| gamma[b].ln())
        };
        // ln(1 + load) rather than ln_1p: the rounding of 1 + load costs at most 1e-16
        // in absolute terms, and features only enter through differences.
        let raw = [
            fastmath::ln_lanes(s),
            log_gamma,
            fastmath::ln_lanes(per_lane!(BLOCK, |b| 1.0 + load[b])),
        ];
        let mut z = [[0.0; BLOCK]; FEATURES];
        for d in 0..FEATURES {
            z[d] = per_lane!(BLOCK, |b| ((raw[d][b] - self.x_mean[d]) / self.x_scale[d])
                / self.length_scales[d]);
        }
        z
    }

    /// Up to `BLOCK` candidates; `scratch` has `n` rows. Shorter blocks are padded with
    /// copies of their first candidate, whose results are dropped.
    #[inline(always)]
    fn predict_block(
        &self,
        s: &[f64],
        gamma: &[f64],
        load: &[f64],
        scratch: &mut [[f64; BLOCK]],
        mean_out: &mut [f64],
        sd_out: &mut [f64],
    ) {
        let rows = s.len();
        let z = self.features(
            per_lane!(BLOCK, |b| s[if b < rows { b } else { 0 }]),
            per_lane!(BLOCK, |b| gamma[if b < rows { b } else { 0 }]),
            per_lane!(BLOCK, |b| load[if b < rows { b } else { 0 }]),
        );
        // Cross-covariances k[j][b] between training row j and candidate b.
        let constant = self.constant;
        for (k_row, x_j) in scratch.iter_mut().zip(&self.train) {
            let exponent = per_lane!(BLOCK, |b| {
                let d0 = z[0][b] - x_j[0];
                let d1 = z[1][b] - x_j[1];
                let d2 = z[2][b] - x_j[2];
                -0.5 * (d0 * d0 + d1 * d1 + d2 * d2)
            });
            let kernel = fastmath::exp_lanes(exponent);
            *k_row = per_lane!(BLOCK, |b| constant * kernel[b]);
        }
        let mut projection = [0.0; BLOCK];
        for (k_row, &a) in scratch.iter().zip(&self.alpha) {
            for b in 0..BLOCK {
                projection[b] += k_row[b] * a;
            }
        }
        // Forward substitution L v = k, in place, row by row: each row's dot product
        // with the solved rows accumulates in registers for the whole block.
        let mut packed = 0;
        for i in 0..self.n {
            let (solved, rest) = scratch.split_at_mut(i);
            let mut acc = rest[0];
            for (&l, v) in self.lower[packed..packed + i].iter().zip(solved.iter()) {
                for b in 0..BLOCK {
                    acc[b] -= l * v[b];
                }
            }
            packed += i;
            let d = self.diagonal[i];
            for b in 0..BLOCK {
                rest[0][b] = acc[b] / d;
            }
        }
        let mut explained = [0.0; BLOCK];
        for v in scratch.iter() {
            for b in 0..BLOCK {
                explained[b] += v[b] * v[b];
            }
        }
        let y_variance_scale = self.y_scale * self.y_scale;
        for b in 0..rows {
            mean_out[b] = self.y_scale * projection[b] + self.y_mean;
            // Rounding can leave a tiny negative variance next to a training point;
            // sklearn clips it to 0 the same way.
            let variance = (self.prior_variance - explained[b]).max(0.0);
            sd_out[b] = (variance * y_variance_scale).sqrt();
        }
    }
}

/// Consecutive candidates, compiled for the CPU's SIMD level (see `par`).
struct PredictRows<'a> {
    gp: &'a GpPosterior,
    s: &'a [f64],
    gamma: &'a [f64],
    load: &'a [f64],
    mean: &'a mut [f64],
    sd: &'a mut [f64],
}

impl WithSimd for PredictRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let mut scratch = vec![[0.0; BLOCK]; self.gp.n];
        let mut start = 0;
        while start < self.s.len() {
            let end = (start + BLOCK).min(self.s.len());
            self.gp.predict_block(
                &self.s[start..end],
                &self.gamma[start..end],
                &self.load[start..end],
                &mut scratch,
                &mut self.mean[start..end],
                &mut self.sd[start..end],
            );
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One training point: the posterior at it is known in closed form.
    #[test]
    fn single_point_posterior() {
        let (constant, noise): (f64, f64) = (2.0, 0.5);
        let l = (constant + noise).sqrt();
        let y = 3.0;
        let parts = GpParts {
            x_train: &[0.0, 0.0, 0.0],
            x_train_shape: (1, 3),
            alpha: &[y / (constant + noise)],
            chol: &[l],
            chol_shape: (1, 1),
            constant,
            length_scales: &[1.0, 1.0, 1.0],
            noise,
            x_mean: &[0.0, 0.0, 0.0],
            x_scale: &[1.0, 1.0, 1.0],
            y_mean: 10.0,
            y_scale: 2.0,
        };
        let gp = GpPosterior::new(&parts).unwrap();
        let (mean, sd) = gp.predict(&[1.0], &[1.0], &[0.0]).unwrap();
        let expected_mean = 10.0 + 2.0 * constant * y / (constant + noise);
        let expected_var = constant + noise - constant * constant / (constant + noise);
        assert!((mean[0] - expected_mean).abs() < 1e-12);
        assert!((sd[0] - 2.0 * expected_var.sqrt()).abs() < 1e-12);
        let err = GpPosterior::new(&GpParts {
            chol: &[0.0],
            ..parts
        })
        .unwrap_err();
        assert_eq!(err.argument(), "chol[0, 0]");
    }
}
