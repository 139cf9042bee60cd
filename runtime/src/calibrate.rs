//! Measuring the host for the cost model: the peak f32 FMA rate over all
//! cores, the memory bandwidth, and what a kernel launch costs.
//!
//! The figures are best-of-trials, as STREAM and peak-FLOP probes report
//! them: the rate the machine sustains when nothing else runs, which is
//! the roofline a kernel is compared with.
//! - **FMA peak**: every thread runs independent chains of fused
//!   multiply-adds on the widest vectors the CPU has (AVX-512, else AVX2 +
//!   FMA, detected at run time; a portable loop elsewhere), enough chains
//!   to cover the FMA latency on two ports. Two flops per lane per FMA.
//! - **Bandwidth**: the STREAM triad `a[i] = b[i] + s * c[i]` over arrays
//!   far larger than the last-level cache, split across the threads;
//!   12 bytes per element (two reads, one write), as STREAM counts them.
//! - **Launch**: the runtime's own [`crate::cpu::launch`] of an empty
//!   kernel over every thread (spawn and join).

use std::time::Instant;

/// What [`measure`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct HostRates {
    /// Threads the measurement used (all the host has).
    pub threads: usize,
    /// The vector instructions of the FMA probe.
    pub isa: &'static str,
    /// f32 flops per second over all threads.
    pub fma_flops: f64,
    /// Bytes per second of the triad over all threads.
    pub bandwidth: f64,
    /// Seconds of one launch of an empty kernel over every thread.
    pub launch_seconds: f64,
}

/// Measures the host; takes about two seconds.
pub fn measure() -> HostRates {
    let threads = crate::cpu::host_threads();
    let (isa, per_iter) = fma_kind();
    let fma_flops = best(3, || {
        let iters = 20_000_000u64;
        let t = Instant::now();
        let sink: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|k| s.spawn(move || fma_chains(iters, k as f32)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        std::hint::black_box(sink);
        (iters as f64 * per_iter * threads as f64) / t.elapsed().as_secs_f64()
    });
    let bandwidth = triad_bandwidth(threads);
    let launch_seconds = launch_cost(threads);
    HostRates {
        threads,
        isa,
        fma_flops,
        bandwidth,
        launch_seconds,
    }
}

/// The best of `n` trials of a rate.
fn best(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(0.0, f64::max)
}

/// Independent accumulators: two FMA ports of latency 4 need 8; 12 leaves
/// room.
const CHAINS: usize = 12;

/// The probe's instruction set and flops per iteration of [`fma_chains`].
fn fma_kind() -> (&'static str, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return ("avx512f", (CHAINS * 16 * 2) as f64);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return ("avx2+fma", (CHAINS * 8 * 2) as f64);
        }
    }
    ("portable", (CHAINS * 8 * 2) as f64)
}

/// `iters` iterations of [`CHAINS`] independent vector FMAs; returns a sum
/// of the accumulators so nothing is optimised away.
fn fma_chains(iters: u64, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { x86::fma512(iters, seed) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { x86::fma256(iters, seed) };
        }
    }
    let mut acc = [[seed; 8]; CHAINS];
    let (a, b) = (
        std::hint::black_box(0.999_f32),
        std::hint::black_box(1e-3_f32),
    );
    for _ in 0..iters {
        for c in acc.iter_mut() {
            for x in c.iter_mut() {
                *x = x.mul_add(a, b);
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(iters: u64, seed: f32) -> f32 {
        let a = _mm512_set1_ps(std::hint::black_box(0.999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-3));
        let mut acc = [_mm512_set1_ps(seed); CHAINS];
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_fmadd_ps(*c, a, b);
            }
        }
        acc.iter().map(|c| _mm512_reduce_add_ps(*c)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(iters: u64, seed: f32) -> f32 {
        let a = _mm256_set1_ps(std::hint::black_box(0.999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-3));
        let mut acc = [_mm256_set1_ps(seed); CHAINS];
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm256_fmadd_ps(*c, a, b);
            }
        }
        let mut out = [0f32; 8];
        let mut total = 0.0;
        for c in acc {
            _mm256_storeu_ps(out.as_mut_ptr(), c);
            total += out.iter().sum::<f32>();
        }
        total
    }
}

/// The STREAM triad's bandwidth over `threads` threads, best of 5, on
/// arrays of 64 MiB each.
fn triad_bandwidth(threads: usize) -> f64 {
    let n = 16 << 20;
    let b = vec![1.0f32; n];
    let c = vec![2.0f32; n];
    let mut a = vec![0.0f32; n];
    let chunk = n.div_ceil(threads);
    best(5, || {
        let s = std::hint::black_box(3.0f32);
        let t = Instant::now();
        std::thread::scope(|sc| {
            for ((a, b), c) in a
                .chunks_mut(chunk)
                .zip(b.chunks(chunk))
                .zip(c.chunks(chunk))
            {
                sc.spawn(move || {
                    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
                        *x = y + s * z;
                    }
                });
            }
        });
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(&a);
        (12 * n) as f64 / secs
    })
}

unsafe extern "C" fn empty_kernel(_: *const *mut f32, _: *const i64, _: *mut i64, _: i64, _: i64) {}

/// Seconds of one [`crate::cpu::launch`] of an empty kernel over every
/// thread: the median of 200.
fn launch_cost(threads: usize) -> f64 {
    let bufs: [*mut f32; 1] = [std::ptr::null_mut()];
    let sizes = [0i64];
    let mut samples: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            // SAFETY: the kernel reads nothing.
            unsafe {
                crate::cpu::launch(
                    empty_kernel,
                    Some(threads as i64 * 64),
                    threads,
                    bufs.as_ptr(),
                    sizes.as_ptr(),
                )
            };
            t.elapsed().as_secs_f64()
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_measure_positive_finite_rates() {
        let r = measure();
        assert!(r.threads >= 1);
        // Any machine that runs the suite does more than a GFLOP/s and a
        // GB/s, and less than a PFLOP/s and a TB/s per core.
        assert!(r.fma_flops > 1e9 && r.fma_flops < 1e15, "{r:?}");
        assert!(
            r.bandwidth > 1e9 && r.bandwidth < 1e12 * r.threads as f64,
            "{r:?}"
        );
        assert!(r.launch_seconds > 0.0 && r.launch_seconds < 0.1, "{r:?}");
    }
}
