//! Arithmetic rate of the CPU kernels on Stable Diffusion 1.5's shapes at 512 px (64x64
//! latents), in GFLOP/s (2 flops per multiply-add), for docs/PERFORMANCE.md: the convolution
//! forward and its input gradient, the token projections, flash attention forward and backward,
//! and the `gemm` crate on a 2048^3 product (the reference against torch's sgemm).
//!
//! `cargo run --release -p invert-model --example kernel_rates` (`scripts/bench_kernels.sh`
//! also runs torch's sgemm beside it); with `-- world`, the bundled model's convolutions at
//! `invert pretrain`'s batch instead, forward and both gradients.

use std::time::Instant;

use invert_model::cpu::attention::{Dims, attention_tokens_lse};
use invert_model::cpu::attention_backward::attention_backward;
use invert_model::cpu::conv::{Conv, Input, Weights, conv2d};
use invert_model::cpu::conv_backward::input_gradient;
use invert_model::cpu::conv_weight_gradient::weight_gradient;
use invert_model::cpu::gemm::{Dest, View, gemm};
use invert_model::cpu::linear::matmul;

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

/// Best of `reps` timings of `f`, after one warm-up call.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(what: &str, flops: f64, secs: f64) {
    println!(
        "| {what} | {:.2} | {:.1} ms | {:.1} |",
        flops / 1e9,
        secs * 1e3,
        flops / secs / 1e9
    );
}

fn main() {
    // The allocator settings `invert` runs with (fresh mappings per buffer otherwise).
    invert_model::cpu::allocator::tune_for_tensors();
    println!("| kernel | GFLOP | best time | GFLOP/s |\n|---|---:|---:|---:|");
    if std::env::args().any(|a| a == "world") {
        return world();
    }
    let n = 2048;
    let (a, b) = (data(n * n, 1), data(n * n, 2));
    let mut c = vec![0.0f32; n * n];
    let secs = best(3, || {
        let dst = Dest {
            data: &mut c,
            offset: 0,
            rs: n,
            cs: 1,
        };
        gemm(n, n, n, dst, View::rows(&a, n), View::rows(&b, n), false);
    });
    report("gemm crate, 2048^3", 2.0 * (n * n * n) as f64, secs);

    for (ch, side, k) in [
        (320, 64, 3),
        (640, 32, 3),
        (1280, 16, 3),
        (320, 64, 1),
        (1280, 16, 1),
        // The VAE encoder's (which `invert train` runs once per image and flip) at 256 px.
        (128, 256, 3),
        (256, 128, 3),
        (512, 64, 3),
    ] {
        let x = data(ch * side * side, 3);
        let w = data(ch * ch * k * k, 4);
        let conv = Conv {
            x: &x,
            batch: 1,
            cin: ch,
            h: side,
            w: side,
            weight: &w,
            cout: ch,
            k,
            bias: None,
            image_bias: None,
            residual: None,
            input: Input::Plain,
            weights: Weights::Forward,
        };
        let flops = 2.0 * (ch * ch * k * k * side * side) as f64;
        report(
            &format!("conv {k}x{k} {ch}->{ch} at {side}x{side}"),
            flops,
            best(3, || drop(conv2d(&conv))),
        );
        report(
            "conv input gradient, same shape",
            flops,
            best(3, || drop(input_gradient(&conv, &x))),
        );
    }

    for (rows, k, n) in [(4096, 320, 320), (4096, 320, 2560), (4096, 1280, 320)] {
        let (x, w) = (data(rows * k, 5), data(k * n, 6));
        let flops = 2.0 * (rows * k * n) as f64;
        report(
            &format!("linear {rows}x{k} @ {k}x{n}"),
            flops,
            best(3, || drop(matmul(&x, rows, k, &w, n, None))),
        );
        let mut y = vec![0.0f32; rows * n];
        let secs = best(3, || {
            let dst = Dest {
                data: &mut y,
                offset: 0,
                rs: n,
                cs: 1,
            };
            gemm(rows, n, k, dst, View::rows(&x, k), View::rows(&w, n), false);
        });
        report("  the same through the gemm crate", flops, secs);
    }

    for (l, lk) in [(4096, 4096), (4096, 77), (1024, 1024)] {
        let dims = Dims {
            batch: 1,
            lq: l,
            lk,
            heads: 8,
            d: 40,
            causal: false,
        };
        let inner = 320;
        let (q, k, v) = (data(l * inner, 7), data(lk * inner, 8), data(lk * inner, 9));
        let dout = data(l * inner, 10);
        let (out, lse) = attention_tokens_lse(&q, &k, &v, &dims);
        let mm = 2.0 * (8 * l * lk * 40) as f64;
        report(
            &format!("attention forward, 8 heads x {l} x {lk}, d 40"),
            2.0 * mm,
            best(2, || drop(attention_tokens_lse(&q, &k, &v, &dims))),
        );
        report(
            "attention backward, same shape",
            5.0 * mm,
            best(2, || {
                drop(attention_backward(
                    &q, &k, &v, &out, &lse, &dout, &dims, [true; 3],
                ))
            }),
        );
    }
}

/// The bundled model's U-Net convolutions (`configs/pretrain/world.toml`: batch 48, 16x16
/// latents, 32 to 128 channels), where `invert pretrain` also computes weight gradients.
fn world() {
    for (cin, cout, side, k) in [
        (32, 32, 16, 3),
        (96, 32, 16, 3),
        (64, 64, 8, 3),
        (192, 64, 8, 3),
        (128, 128, 4, 3),
        (256, 128, 4, 3),
        (128, 128, 2, 3),
        (96, 32, 16, 1),
    ] {
        let batch = 48;
        let x = data(batch * cin * side * side, 3);
        let w = data(cout * cin * k * k, 4);
        let dy = data(batch * cout * side * side, 5);
        let conv = Conv {
            x: &x,
            batch,
            cin,
            h: side,
            w: side,
            weight: &w,
            cout,
            k,
            bias: None,
            image_bias: None,
            residual: None,
            input: Input::Plain,
            weights: Weights::Forward,
        };
        let flops = 2.0 * (batch * cin * cout * k * k * side * side) as f64;
        report(
            &format!("b{batch} conv {k}x{k} {cin}->{cout} at {side}x{side}"),
            flops,
            best(5, || drop(conv2d(&conv))),
        );
        report(
            "  input gradient",
            flops,
            best(5, || drop(input_gradient(&conv, &dy))),
        );
        report(
            "  weight gradient",
            flops,
            best(5, || drop(weight_gradient(&conv, &dy))),
        );
    }
}
