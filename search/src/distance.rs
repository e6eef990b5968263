//! Dot products and squared euclidean distances over `f32` rows: the inner loop
//! of every vector search and of the HNSW build.
//!
//! The build targets baseline x86-64 (SSE2), so the compiler alone vectorises four
//! lanes at a time. [`pulp`] picks the widest instruction set the CPU has when the
//! process starts (AVX2 with fused multiply-add on x86-64 today) and runs the
//! kernels with it, with no `unsafe` here; on a CPU without it the portable loops
//! below run instead. Four independent accumulators keep the fused multiply-adds'
//! latency hidden.

use pulp::{Arch, Simd, WithSimd};

/// The instruction set chosen once for this process.
fn arch() -> Arch {
    static ARCH: std::sync::OnceLock<Arch> = std::sync::OnceLock::new();
    *ARCH.get_or_init(Arch::new)
}

/// `a . b` over the shorter length.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    run(a, b, Op::Dot)
}

/// `|a - b|^2` over the shorter length.
#[inline]
pub(crate) fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    run(a, b, Op::L2sq)
}

#[inline]
fn run(a: &[f32], b: &[f32], op: Op) -> f32 {
    let n = a.len().min(b.len());
    arch().dispatch(Kernel {
        a: &a[..n],
        b: &b[..n],
        op,
    })
}

/// Asks the CPU to start loading the start of `row` into its caches, so a
/// distance computed a little later does not wait on memory: a graph walk's
/// time goes to loading rows, not to arithmetic. One line per row, as hnswlib
/// does: the hardware's stream prefetcher follows on with the rest, and asking
/// for every line of 32 rows at once stalls on the CPU's miss buffers. A hint
/// only; elsewhere than x86-64 it does nothing.
#[inline(always)]
pub(crate) fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(first) = row.first() {
        safe_arch::prefetch_t0(first);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Dot,
    L2sq,
}

/// One kernel call: two rows of the same length.
struct Kernel<'a> {
    a: &'a [f32],
    b: &'a [f32],
    op: Op,
}

impl WithSimd for Kernel<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        if S::IS_SCALAR {
            return match self.op {
                Op::Dot => portable_dot(self.a, self.b),
                Op::L2sq => portable_l2sq(self.a, self.b),
            };
        }
        let (a, a_tail) = S::as_simd_f32s(self.a);
        let (b, b_tail) = S::as_simd_f32s(self.b);
        let zero = simd.splat_f32s(0.0);
        let mut acc = [zero; 4];
        let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
        let (a_rest, b_rest) = (a4.remainder(), b4.remainder());
        let step = |acc: S::f32s, x: S::f32s, y: S::f32s| match self.op {
            Op::Dot => simd.mul_add_e_f32s(x, y, acc),
            Op::L2sq => {
                let d = simd.sub_f32s(x, y);
                simd.mul_add_e_f32s(d, d, acc)
            }
        };
        for (x, y) in a4.zip(b4) {
            for i in 0..4 {
                acc[i] = step(acc[i], x[i], y[i]);
            }
        }
        for (&x, &y) in a_rest.iter().zip(b_rest) {
            acc[0] = step(acc[0], x, y);
        }
        let sum = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
        let mut sum = simd.reduce_sum_f32s(sum);
        for (x, y) in a_tail.iter().zip(b_tail) {
            sum += match self.op {
                Op::Dot => x * y,
                Op::L2sq => (x - y) * (x - y),
            };
        }
        sum
    }
}

/// Dot product with eight independent accumulators over fixed-size chunks, so the
/// compiler vectorises it without bounds checks.
fn portable_dot(a: &[f32], b: &[f32]) -> f32 {
    portable(a, b, |x, y| x * y)
}

fn portable_l2sq(a: &[f32], b: &[f32]) -> f32 {
    portable(a, b, |x, y| (x - y) * (x - y))
}

#[inline(always)]
fn portable(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0f32; 8];
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += term(x[i], y[i]);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (&x, &y) in ra.iter().zip(rb) {
        sum += term(x, y);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], op: Op) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| match op {
                Op::Dot => x as f64 * y as f64,
                Op::L2sq => (x as f64 - y as f64).powi(2),
            })
            .sum()
    }

    /// Every length from 0 to 100 (so every mix of full blocks, leftover vectors
    /// and a scalar tail) agrees with a plain f64 sum, on both kernels and on the
    /// portable fallback.
    #[test]
    fn kernels_agree_with_a_plain_sum() {
        for n in 0..100 {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 4.0) / 3.0).collect();
            for (got, op) in [
                (dot(&a, &b), Op::Dot),
                (l2sq(&a, &b), Op::L2sq),
                (portable_dot(&a, &b), Op::Dot),
                (portable_l2sq(&a, &b), Op::L2sq),
            ] {
                let want = naive(&a, &b, op);
                assert!(
                    (got as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "n {n}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn the_shorter_length_counts() {
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[1.0, 1.0]), 3.0);
        assert_eq!(l2sq(&[1.0, 2.0], &[0.0, 0.0, 9.0]), 5.0);
    }
}
