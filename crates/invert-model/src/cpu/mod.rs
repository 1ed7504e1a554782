//! Fused CPU kernels on burn's `flex` backend: the forward and backward computations behind
//! [`crate::fused`]'s operations.
//!
//! burn 0.22.1's flex backend computes `exp` one element at a time (libm `expf`), spends more
//! time in the bookkeeping around its convolution GEMMs (NHWC copies, im2col, a strided
//! write-back) than in the products themselves, and runs GroupNorm as seven separate passes.
//! For Stable Diffusion's small head widths (8 to 160) attention was more than half of a
//! denoising step. This module holds the kernels that replace those paths:
//!
//! - [`attention`]: `softmax(q k^T / sqrt(d)) v` for all heads straight from the
//!   `[b, l, heads * d]` token layout, with a vectorised `exp`;
//! - [`conv`]: stride-1 "same" convolutions (3x3 and 1x1) with an optional per-channel affine +
//!   SiLU (a GroupNorm) or a nearest 2x upsample applied while reading the input, a per-image bias
//!   (the time embedding) and a residual added while writing the output;
//! - [`norm`]: GroupNorm statistics as a per-channel scale and shift.
//!
//! Flex f32 tensors, plain or autodiff, take these paths ([`fused_path`]) through
//! [`crate::fused`], which adds the backward kernels; wgpu and half precision use burn's own
//! operations. Set `INVERT_NO_FUSED=1` to turn them off (for comparisons), `INVERT_SIMD=avx2|portable` to narrow the instruction set,
//! `INVERT_THREADS=n` to set the number of threads.

pub mod act;
pub mod allocator;
pub mod attention;
pub mod attention_backward;
pub mod conv;
pub mod conv_backward;
pub mod conv_weight_gradient;
pub mod conv_winograd;
pub mod gemm;
pub mod linear;
pub mod norm;
pub mod norm_backward;
pub mod simd;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::DType;

/// True when tensors on `device` with `dtype` take the fused kernels: flex f32, plain or
/// autodiff (`Device::flex() == Device::flex().autodiff()` in burn 0.22), unless
/// `INVERT_NO_FUSED` is set.
pub fn fused_path(device: &Device, dtype: DType) -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var_os("INVERT_NO_FUSED").is_some());
    !off && dtype == DType::F32 && *device == Device::flex()
}

/// A flex f32 tensor's values, borrowed without copying when contiguous.
pub struct Values {
    tensor: FlexTensor,
    start: usize,
    len: usize,
}

impl Values {
    /// The tensor's values in row-major order. Panics unless `t` is a plain flex f32 tensor.
    pub fn of<const D: usize>(t: Tensor<D>) -> Self {
        let tensor = t
            .try_into_primitive::<Flex>()
            .expect("fused kernels need a plain flex tensor");
        Self::flex(&tensor)
    }

    /// The values of a flex primitive (a reference-counted view; copied only when the layout is
    /// not contiguous).
    pub fn flex(tensor: &FlexTensor) -> Self {
        assert_eq!(tensor.dtype(), DType::F32, "fused kernels need f32 tensors");
        let tensor = if tensor.layout().is_contiguous() {
            tensor.clone()
        } else {
            tensor.to_contiguous()
        };
        let (start, end) = tensor
            .layout()
            .contiguous_offsets()
            .expect("contiguous after to_contiguous");
        Self {
            tensor,
            start,
            len: end - start,
        }
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.tensor.storage::<f32>()[self.start..self.start + self.len]
    }
}

/// A tensor on `device` holding `values` (no copy).
pub fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A flex primitive holding `values` (no copy: the `Vec` becomes the tensor's storage).
pub fn flex_tensor<S: Into<burn::tensor::Shape>>(values: Vec<f32>, shape: S) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The best instruction set this CPU has (`INVERT_SIMD=avx2|portable` narrows it).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let cap = std::env::var("INVERT_SIMD").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            if cap.is_empty()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if cap != "portable"
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        let _ = cap;
        Isa::Portable
    })
}

/// Threads the kernels use: the machine's available parallelism (`INVERT_THREADS` overrides it).
pub fn threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("INVERT_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
    })
}

// ---------------------------------------------------------------------------------------------
// A small persistent thread pool. Spawning threads per kernel costs tens of microseconds, which
// is noticeable next to the millisecond-sized kernels of the small models.

type Job = *const (dyn Fn() + Sync);

struct Slot {
    epoch: u64,
    job: Option<JobPtr>,
    /// Workers that should run the current job.
    wanted: usize,
    /// Workers blocked on `wake`.
    sleeping: usize,
    /// The caller is blocked on `done`.
    caller_waiting: bool,
}

#[derive(Clone, Copy)]
struct JobPtr(Job);
// SAFETY: the job is `Sync`, and `Pool::run` keeps it alive until every worker is done with it.
unsafe impl Send for JobPtr {}

/// How long an idle worker keeps looking for the next job before it sleeps: kernels follow one
/// another within microseconds, and waking a sleeping thread costs about as much as a small
/// kernel. The spin yields, so other runnable threads (burn's own pool) are not held up.
fn spin() -> std::time::Duration {
    static SPIN: OnceLock<std::time::Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("INVERT_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        std::time::Duration::from_micros(us)
    })
}

struct Pool {
    workers: usize,
    slot: Mutex<Slot>,
    /// `slot.epoch`, readable without the lock.
    epoch: AtomicU64,
    /// Workers still running the current job.
    running: AtomicUsize,
    panicked: AtomicBool,
    wake: Condvar,
    done: Condvar,
    /// Held by the caller whose job the workers run; others run their work alone.
    busy: Mutex<()>,
}

impl Pool {
    fn get() -> &'static Pool {
        static POOL: OnceLock<&'static Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let workers = threads().saturating_sub(1);
            let pool: &'static Pool = Box::leak(Box::new(Pool {
                workers,
                slot: Mutex::new(Slot {
                    epoch: 0,
                    job: None,
                    wanted: 0,
                    sleeping: 0,
                    caller_waiting: false,
                }),
                epoch: AtomicU64::new(0),
                running: AtomicUsize::new(0),
                panicked: AtomicBool::new(false),
                wake: Condvar::new(),
                done: Condvar::new(),
                busy: Mutex::new(()),
            }));
            for index in 0..workers {
                std::thread::Builder::new()
                    .name(format!("invert-cpu-{index}"))
                    .spawn(move || pool.work(index))
                    .expect("spawning a kernel thread");
            }
            pool
        })
    }

    fn work(&self, index: usize) {
        let mut seen = 0;
        loop {
            let start = std::time::Instant::now();
            while self.epoch.load(Ordering::Acquire) == seen && start.elapsed() < spin() {
                std::thread::yield_now();
            }
            let job = {
                let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
                while slot.epoch == seen {
                    slot.sleeping += 1;
                    slot = self.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                    slot.sleeping -= 1;
                }
                seen = slot.epoch;
                if index >= slot.wanted {
                    continue;
                }
                slot.job.expect("a job with the new epoch")
            };
            // SAFETY: `run` waits for `running` to reach zero before the job goes out of scope.
            let ok =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*job.0)() }))
                    .is_ok();
            if !ok {
                self.panicked.store(true, Ordering::Release);
            }
            if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
                if slot.caller_waiting {
                    self.done.notify_all();
                }
            }
        }
    }

    /// Runs `f` on the calling thread and on `extra` workers at once, and returns when all are
    /// done. If another caller is using the workers, `f` runs on the calling thread only.
    fn run(&self, extra: usize, f: &(dyn Fn() + Sync)) {
        let extra = extra.min(self.workers);
        let guard = if extra > 0 {
            self.busy.try_lock().ok()
        } else {
            None
        };
        let Some(_guard) = guard else {
            f();
            return;
        };
        // SAFETY: only the lifetime is erased; we wait below until no worker uses the job.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), Job>(f) };
        {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.epoch += 1;
            slot.job = Some(JobPtr(job));
            slot.wanted = extra;
            self.panicked.store(false, Ordering::Relaxed);
            self.running.store(extra, Ordering::Release);
            self.epoch.store(slot.epoch, Ordering::Release);
            if slot.sleeping > 0 {
                self.wake.notify_all();
            }
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let start = std::time::Instant::now();
        while self.running.load(Ordering::Acquire) > 0 && start.elapsed() < spin() {
            std::thread::yield_now();
        }
        {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.caller_waiting = true;
            while self.running.load(Ordering::Acquire) > 0 {
                slot = self.done.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
            slot.caller_waiting = false;
            slot.job = None;
        }
        if let Err(e) = mine {
            std::panic::resume_unwind(e);
        }
        assert!(
            !self.panicked.load(Ordering::Acquire),
            "a CPU kernel panicked on a worker thread"
        );
    }
}

/// Calls `task(i)` for every `i` in `0..tasks`, spread over up to `max_threads` threads (the
/// caller included) that take the next task as they finish one.
pub fn parallel_for(tasks: usize, max_threads: usize, task: impl Fn(usize) + Sync) {
    let threads = max_threads.min(threads()).min(tasks);
    if threads <= 1 {
        (0..tasks).for_each(task);
        return;
    }
    let next = AtomicUsize::new(0);
    let body = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                break;
            }
            task(i);
        }
    };
    Pool::get().run(threads - 1, &body);
}

/// Threads worth using for `work` multiply-adds (about a quarter of a millisecond each).
pub fn threads_for(work: usize) -> usize {
    1 + work / 2_000_000
}

/// A raw pointer that may cross threads; users write disjoint ranges.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: every user writes disjoint ranges and joins before reading.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`).
    pub fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Deterministic values in `[-1, 1)` (xorshift32) for the kernels' unit tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_for_runs_every_task_once() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..20 {
            parallel_for(hits.len(), 8, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 20));
    }

    #[test]
    fn only_flex_f32_takes_the_fused_path() {
        assert!(
            fused_path(&Device::flex(), DType::F32)
                || std::env::var_os("INVERT_NO_FUSED").is_some()
        );
        assert_eq!(
            fused_path(&Device::flex().autodiff(), DType::F32),
            fused_path(&Device::flex(), DType::F32)
        );
        assert!(!fused_path(&Device::flex(), DType::F16));
    }

    #[test]
    fn values_read_a_flex_tensor() {
        let device = Device::flex();
        let t = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
        assert_eq!(Values::of(t.clone()).as_slice(), &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(Values::of(t.transpose()).as_slice(), &[1.0, 3.0, 2.0, 4.0]);
        let back = tensor(vec![5.0, 6.0], [1, 2], &device);
        assert_eq!(
            back.into_data().try_to_vec::<f32>().unwrap(),
            vec![5.0, 6.0]
        );
    }
}
