//! Dot products and squared euclidean distances over `f32` rows: the inner loop
//! of every vector search and of the HNSW build.
//!
//! The build targets baseline x86-64 (SSE2), so the compiler alone vectorises four
//! lanes at a time. [`pulp`] picks the widest instruction set the CPU has when the
//! process starts (AVX-512 where there is one, else AVX2 with fused multiply-add)
//! and runs the kernels with it, with no `unsafe` here; on a CPU without either
//! the portable loops below run instead. Four independent accumulators keep the
//! fused multiply-adds' latency hidden.
//!
//! Half-precision rows ([`to_f16`], [`dot_half`]): an HNSW walk spends its time
//! waiting for rows to arrive from memory, so a cosine graph walks a copy of its
//! unit vectors in IEEE half precision, half the bytes. With AVX-512 each load of
//! sixteen components is widened by one instruction (`vcvtph2ps`); without it
//! the rows are widened a block at a time (F16C where there is one) and fed
//! to the `f32` kernel, which costs more than it saves (builds twice as slow),
//! so no copy is kept unless asked for ([`half_rows_pay`]). Half precision's
//! 11-bit mantissa moves a unit-vector dot product by about 3e-5, far below
//! the gaps between neighbours: recall is unchanged (bfloat16's 8 bits, tried
//! first, cost 0.002 of recall@10).

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

/// Whether this CPU converts half-precision rows in hardware (AVX-512): only
/// then does walking a graph over half-precision copies pay.
pub(crate) fn half_rows_pay() -> bool {
    half_arch().is_some()
}

#[cfg(target_arch = "x86_64")]
fn half_arch() -> Option<pulp::x86::V4> {
    static V4: std::sync::OnceLock<Option<pulp::x86::V4>> = std::sync::OnceLock::new();
    *V4.get_or_init(pulp::x86::V4::try_new)
}

#[cfg(not(target_arch = "x86_64"))]
fn half_arch() -> Option<()> {
    None
}

/// Rounds to the nearest IEEE half-precision value (ties to even); beyond its
/// range (65504) it gives infinity, below it subnormals, then zero.
pub(crate) fn to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// The value of a half-precision number.
pub(crate) fn from_f16(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// `q . row` with `row` in half precision, over the shorter length.
pub(crate) fn dot_half(q: &[f32], row: &[u16]) -> f32 {
    let n = q.len().min(row.len());
    let (q, row) = (&q[..n], &row[..n]);
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = half_arch() {
        return simd.vectorize(HalfDot { simd, q, row });
    }
    // Widened a block at a time (eight at once where the CPU has F16C),
    // then the `f32` kernel.
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let mut wide = [0f32; 64];
    let mut sum = 0.0;
    for (q, row) in q.chunks(64).zip(row.chunks(64)) {
        let wide = &mut wide[..row.len()];
        row.reinterpret_cast::<half::f16>()
            .convert_to_f32_slice(wide);
        sum += dot(q, wide);
    }
    sum
}

#[cfg(target_arch = "x86_64")]
struct HalfDot<'a> {
    simd: pulp::x86::V4,
    q: &'a [f32],
    row: &'a [u16],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for HalfDot<'_> {
    type Output = f32;

    /// Sixteen components per step: `vcvtph2ps` widens them as they load, and
    /// four accumulators hide the multiply-adds' latency.
    #[inline(always)]
    fn call(self) -> f32 {
        use pulp::cast;
        use std::arch::x86_64::{__m256i, __m512};
        let f = self.simd.avx512f;
        let mut acc = [f._mm512_setzero_ps(); 4];
        let (qs, q_tail) = self.q.as_chunks::<64>();
        let (rs, r_tail) = self.row.as_chunks::<64>();
        for (q, r) in qs.iter().zip(rs) {
            let q: [[f32; 16]; 4] = cast(*q);
            let r: [[u16; 16]; 4] = cast(*r);
            for i in 0..4 {
                let x: __m512 = cast(q[i]);
                let y = f._mm512_cvtph_ps(cast::<[u16; 16], __m256i>(r[i]));
                acc[i] = f._mm512_fmadd_ps(x, y, acc[i]);
            }
        }
        let sum = f._mm512_add_ps(
            f._mm512_add_ps(acc[0], acc[1]),
            f._mm512_add_ps(acc[2], acc[3]),
        );
        let tail: f32 = q_tail
            .iter()
            .zip(r_tail)
            .map(|(&x, &h)| x * from_f16(h))
            .sum();
        f._mm512_reduce_add_ps(sum) + tail
    }
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
    fn half_precision_rounds_to_nearest_even() {
        for (x, h) in [
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (0.1, 0x2e66),
            (1.0 / 3.0, 0x3555),
            (65504.0, 0x7bff),
            (65519.0, 0x7bff),
            // Halfway between 65504 and 65536 ties to the even one: infinity.
            (65520.0, 0x7c00),
            (1e9, 0x7c00),
            (-1e9, 0xfc00),
            (2f32.powi(-24), 0x0001),
            (2f32.powi(-25), 0x0000),
            (2f32.powi(-25) * 1.5, 0x0001),
            (2f32.powi(-14), 0x0400),
            (2f32.powi(-14) - 2f32.powi(-24), 0x03ff),
            // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: even is 1.
            (1.0 + 2f32.powi(-11), 0x3c00),
            (1.0 + 3.0 * 2f32.powi(-11), 0x3c02),
        ] {
            assert_eq!(to_f16(x), h, "{x}");
        }
        for i in 0..20_000 {
            let x = ((i * 7919 % 20_000) as f32 - 10_000.0) / 9_999.0;
            let back = from_f16(to_f16(x));
            assert!((back - x).abs() <= x.abs() * 2f32.powi(-11) + 2f32.powi(-25));
            assert_eq!(to_f16(back), to_f16(x));
        }
    }

    /// Every length from 0 to 150 (full blocks of 64, and a tail) agrees with a
    /// plain sum over the widened row, whichever kernel this CPU runs.
    #[test]
    fn half_precision_dot_agrees_with_a_plain_sum() {
        for n in 0..150 {
            let q: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let row: Vec<u16> = (0..n)
                .map(|i| to_f16(((i * 5 % 11) as f32 - 4.0) / 3.0))
                .collect();
            let want: f64 = q
                .iter()
                .zip(&row)
                .map(|(&x, &h)| x as f64 * from_f16(h) as f64)
                .sum();
            let got = dot_half(&q, &row);
            assert!(
                (got as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
                "n {n}: {got} vs {want}"
            );
        }
        assert_eq!(dot_half(&[1.0, 2.0, 3.0], &[to_f16(1.0), to_f16(1.0)]), 3.0);
    }

    #[test]
    fn the_shorter_length_counts() {
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[1.0, 1.0]), 3.0);
        assert_eq!(l2sq(&[1.0, 2.0], &[0.0, 0.0, 9.0]), 5.0);
    }
}
