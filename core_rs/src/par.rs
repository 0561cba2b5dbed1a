//! How batch loops run: [`LANES`] rows per step, compiled for the widest SIMD the CPU
//! offers, split over rayon's pool for long inputs.
//!
//! - SIMD: the wheel targets baseline x86-64 (SSE2, two f64 per instruction). `pulp`
//!   detects AVX2/FMA or AVX-512 at run time and runs a loop inside a function compiled
//!   for them; everything the loop calls must be `#[inline(always)]` to be compiled that
//!   way, hence kernels are traits with such methods rather than closures (a closure
//!   kernel measured no faster than SSE2). No FMA contraction happens, so every path
//!   rounds identically.
//! - Threads: below `PAR_MIN_LEN` rows, waking the pool (tens of microseconds) costs
//!   more than the work, so short inputs run on the calling thread.
//! - Blocks: kernels see fixed-size blocks; a ragged tail is padded with copies of its
//!   first row and the padding's results are dropped.
//! - Validation is fused into the computing pass (`fill2`/`fill3` report whether every
//!   value was in range): at a million rows the data no longer fits in cache, and a
//!   separate checking pass per column cost as much as the arithmetic.
//! - Outputs are caller-provided so the Python layer can hand in numpy-allocated memory
//!   (numpy backs large arrays with huge pages; a fresh 8 MB `Vec` costs ~2000 page
//!   faults, measured at 3 ms per million rows here).

use std::sync::LazyLock;

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::check::{admitted, Bounds};

pub use crate::fastmath::LANES;

/// Rows from which a batch is split over threads.
pub const PAR_MIN_LEN: usize = 1 << 15;
/// Rows per parallel task (a multiple of `LANES`).
const CHUNK: usize = 1 << 13;

pub type Block = [f64; LANES];

/// The CPU's SIMD level, detected once (CPUID is slow under virtualisation).
static ARCH: LazyLock<Arch> = LazyLock::new(Arch::new);

/// Runs `job` compiled for the best SIMD level available.
#[inline]
pub fn simd<J: WithSimd>(job: J) -> J::Output {
    ARCH.dispatch(job)
}

/// `out = f(a, b)` for one block of each column.
pub trait Kernel2: Sync {
    fn apply(&self, a: Block, b: Block) -> Block;
}

/// `out = f(a, b, c)` for one block of each column.
pub trait Kernel3: Sync {
    fn apply(&self, a: Block, b: Block, c: Block) -> Block;
}

/// A per-chunk summary folded over a slice (e.g. "all elements valid").
pub trait ChunkFold<T>: Sync {
    fn fold(&self, chunk: &[f64]) -> T;
}

/// A full chunk as a block (the chunk iterators guarantee the length).
#[inline(always)]
fn block(chunk: &[f64]) -> Block {
    chunk.try_into().unwrap_or([0.0; LANES])
}

/// A ragged tail (1 to `LANES - 1` rows) padded with its first row.
#[inline(always)]
fn padded(tail: &[f64]) -> Block {
    std::array::from_fn(|i| tail.get(i).copied().unwrap_or(tail[0]))
}

#[inline(always)]
fn store(out: &mut [f64], values: &Block) {
    let n = out.len();
    out.copy_from_slice(&values[..n]);
}

/// Whether every lane of every block is admitted by its column's bounds.
#[inline(always)]
fn admitted_block<const N: usize>(bounds: &[Bounds; N], blocks: &[Block; N]) -> bool {
    let mut ok = true;
    for (column, values) in bounds.iter().zip(blocks) {
        for &x in values {
            ok &= admitted(*column, x);
        }
    }
    ok
}

struct Fill2<'a, K> {
    out: &'a mut [f64],
    a: &'a [f64],
    b: &'a [f64],
    bounds: [Bounds; 2],
    kernel: &'a K,
}

impl<K: Kernel2> WithSimd for Fill2<'_, K> {
    type Output = bool;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> bool {
        let full = self.out.len() / LANES * LANES;
        let (out, out_tail) = self.out.split_at_mut(full);
        let (a, a_tail) = self.a.split_at(full);
        let (b, b_tail) = self.b.split_at(full);
        let mut ok = true;
        for ((o, x), y) in out
            .chunks_exact_mut(LANES)
            .zip(a.chunks_exact(LANES))
            .zip(b.chunks_exact(LANES))
        {
            let blocks = [block(x), block(y)];
            ok &= admitted_block(&self.bounds, &blocks);
            o.copy_from_slice(&self.kernel.apply(blocks[0], blocks[1]));
        }
        if !out_tail.is_empty() {
            let blocks = [padded(a_tail), padded(b_tail)];
            ok &= admitted_block(&self.bounds, &blocks);
            store(out_tail, &self.kernel.apply(blocks[0], blocks[1]));
        }
        ok
    }
}

struct Fill3<'a, K> {
    out: &'a mut [f64],
    a: &'a [f64],
    b: &'a [f64],
    c: &'a [f64],
    bounds: [Bounds; 3],
    kernel: &'a K,
}

impl<K: Kernel3> WithSimd for Fill3<'_, K> {
    type Output = bool;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> bool {
        let full = self.out.len() / LANES * LANES;
        let (out, out_tail) = self.out.split_at_mut(full);
        let (a, a_tail) = self.a.split_at(full);
        let (b, b_tail) = self.b.split_at(full);
        let (c, c_tail) = self.c.split_at(full);
        let mut ok = true;
        for (((o, x), y), z) in out
            .chunks_exact_mut(LANES)
            .zip(a.chunks_exact(LANES))
            .zip(b.chunks_exact(LANES))
            .zip(c.chunks_exact(LANES))
        {
            let blocks = [block(x), block(y), block(z)];
            ok &= admitted_block(&self.bounds, &blocks);
            o.copy_from_slice(&self.kernel.apply(blocks[0], blocks[1], blocks[2]));
        }
        if !out_tail.is_empty() {
            let blocks = [padded(a_tail), padded(b_tail), padded(c_tail)];
            ok &= admitted_block(&self.bounds, &blocks);
            store(
                out_tail,
                &self.kernel.apply(blocks[0], blocks[1], blocks[2]),
            );
        }
        ok
    }
}

struct Fold<'a, F, T> {
    values: &'a [f64],
    summary: &'a F,
    marker: std::marker::PhantomData<T>,
}

impl<T, F: ChunkFold<T>> WithSimd for Fold<'_, F, T> {
    type Output = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> T {
        self.summary.fold(self.values)
    }
}

/// `out = kernel(a, b)` block by block, validating in the same pass (at a million
/// rows the data no longer fits in cache, so every separate pass costs a full read):
/// returns whether every value was within its column's `bounds`. All lengths are equal
/// (checked by callers); on `false` the output is garbage and the caller reports the
/// precise error.
pub fn fill2<K: Kernel2>(
    out: &mut [f64],
    a: &[f64],
    b: &[f64],
    bounds: [Bounds; 2],
    kernel: &K,
) -> bool {
    debug_assert!(out.len() == a.len() && a.len() == b.len());
    if out.len() >= PAR_MIN_LEN {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .zip(b.par_chunks(CHUNK))
            .map(|((out, a), b)| {
                simd(Fill2 {
                    out,
                    a,
                    b,
                    bounds,
                    kernel,
                })
            })
            .reduce(|| true, |x, y| x & y)
    } else {
        simd(Fill2 {
            out,
            a,
            b,
            bounds,
            kernel,
        })
    }
}

/// [`fill2`] over three columns.
pub fn fill3<K: Kernel3>(
    out: &mut [f64],
    a: &[f64],
    b: &[f64],
    c: &[f64],
    bounds: [Bounds; 3],
    kernel: &K,
) -> bool {
    debug_assert!(out.len() == a.len() && a.len() == b.len() && b.len() == c.len());
    if out.len() >= PAR_MIN_LEN {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .zip(b.par_chunks(CHUNK))
            .zip(c.par_chunks(CHUNK))
            .map(|(((out, a), b), c)| {
                simd(Fill3 {
                    out,
                    a,
                    b,
                    c,
                    bounds,
                    kernel,
                })
            })
            .reduce(|| true, |x, y| x & y)
    } else {
        simd(Fill3 {
            out,
            a,
            b,
            c,
            bounds,
            kernel,
        })
    }
}

/// Folds `summary` over chunks of `values` (in parallel for long inputs) and merges the
/// summaries with `combine`, which must be associative with `identity` neutral.
pub fn reduce_chunks<T, F, C>(values: &[f64], identity: T, summary: &F, combine: C) -> T
where
    T: Send + Sync + Copy,
    F: ChunkFold<T>,
    C: Fn(T, T) -> T + Sync,
{
    let run = |values: &[f64]| {
        simd(Fold {
            values,
            summary,
            marker: std::marker::PhantomData,
        })
    };
    if values.len() >= PAR_MIN_LEN {
        values
            .par_chunks(CHUNK)
            .map(run)
            .reduce(|| identity, &combine)
    } else if values.is_empty() {
        identity
    } else {
        run(values)
    }
}

/// A summary of a range of rows of some columns (e.g. "smallest kept score").
pub trait RowFold<T>: Sync {
    fn fold(&self, rows: std::ops::Range<usize>) -> T;
}

struct RowsJob<'a, F, T> {
    range: std::ops::Range<usize>,
    summary: &'a F,
    marker: std::marker::PhantomData<T>,
}

impl<T, F: RowFold<T>> WithSimd for RowsJob<'_, F, T> {
    type Output = T;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> T {
        self.summary.fold(self.range)
    }
}

/// Folds `summary` over consecutive ranges covering `0..len` (in parallel for long
/// inputs) and merges the parts with `combine`, associative with `identity` neutral.
pub fn reduce_rows<T, F, C>(len: usize, identity: T, summary: &F, combine: C) -> T
where
    T: Send + Sync + Copy,
    F: RowFold<T>,
    C: Fn(T, T) -> T + Sync,
{
    let run = |range: std::ops::Range<usize>| {
        simd(RowsJob {
            range,
            summary,
            marker: std::marker::PhantomData,
        })
    };
    if len >= PAR_MIN_LEN {
        (0..len.div_ceil(CHUNK))
            .into_par_iter()
            .map(|chunk| run(chunk * CHUNK..((chunk + 1) * CHUNK).min(len)))
            .reduce(|| identity, &combine)
    } else {
        run(0..len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Range;
    use crate::fastmath::{pow, pow_lanes};

    struct Power13;

    impl Kernel2 for Power13 {
        // Inlined, so it is compiled for the dispatched SIMD level like real kernels.
        #[inline(always)]
        fn apply(&self, x: Block, _: Block) -> Block {
            pow_lanes(x, 1.3)
        }
    }

    #[test]
    fn dispatched_blocks_round_like_scalar_code() {
        // Long enough for the threaded path, with a ragged tail.
        let x: Vec<f64> = (0..PAR_MIN_LEN + 13)
            .map(|i| 0.25 + i as f64 * 1e-3)
            .collect();
        let mut out = vec![0.0; x.len()];
        let bounds = [Range::Positive.bounds(); 2];
        assert!(fill2(&mut out, &x, &x, bounds, &Power13));
        for (&value, &got) in x.iter().zip(&out) {
            assert_eq!(got.to_bits(), pow(value, 1.3).to_bits());
        }
    }

    #[test]
    fn fused_validation_sees_every_row() {
        let bounds = [Range::Positive.bounds(); 2];
        for bad in [0, 7, 8, 20] {
            let mut x = vec![1.0; 21];
            x[bad] = f64::NAN;
            let mut out = vec![0.0; x.len()];
            assert!(
                !fill2(&mut out, &x, &[1.0; 21], bounds, &Power13),
                "row {bad}"
            );
        }
    }
}
