//! GFLOP/s of `x Wᵀ` on ModernBERT-base and -large shapes: candle f32, the packed f32 kernel, candle bf16,
//! the AVX512-BF16 kernel, the AMX bf16 kernel and the int8 kernel (GOP/s), measured back to back (shared machines are noisy; compare within one run).
//!
//! `cargo run --release -p mbpipe-model --example gemm_bench -- [reps]`

use std::time::Instant;

use mbpipe_model::amx_bf16_gemm::PackedAmxBf16;
use mbpipe_model::bf16_gemm::{available, PackedWeight};
use mbpipe_model::f32_gemm::PackedF32;
use mbpipe_model::int8_gemm::{Int8Kernel, PackedI8};
use mbpipe_model::PackedGemm;
use mbpipe_model::{DType, Device, Tensor};

/// Distinct copies of a weight for the cold-weight column (6 x 7 MiB for the largest shape).
const COLD_COPIES: usize = 6;

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// GFLOP/s of `packed` writing into an output buffer reused across calls, as the forward runs it.
fn reused_output(reps: usize, packed: &dyn PackedGemm, xs: &[f32], m: usize, n: usize) -> f64 {
    let flop = 2.0 * (m * packed.in_features() * n) as f64;
    let mut out = vec![0f32; m * n];
    flop / best_of(reps, || packed.matmul_add_into(xs, m, None, None, &mut out)) / 1e9
}

fn main() {
    let reps: usize = std::env::args().nth(1).map_or(5, |s| s.parse().unwrap());
    let dev = Device::Cpu;
    println!(
        "m x k x n | candle f32 | f32 kernel | f32 kernel, cold weights | candle bf16 | bf16 kernel | bf16 kernel, reused output | AMX bf16, reused output | int8 AVX2 | int8 AVX512-VNNI (512-bit) | int8 AVX-VNNI (its EVEX twin without AVX-VNNI) | int8 AMX, reused output | int8 AVX512-BW (512-bit vpmaddubsw) | int8 Arm sdot | int8 Arm smmla (GFLOP/s)"
    );
    for (m, k, n) in [
        (2048, 768, 2304),
        (2048, 1152, 768),
        (2048, 768, 768),
        (333, 768, 2304),
        (100, 768, 768),
        (4096, 768, 2304),
        (4096, 1152, 768),
        (4096, 768, 768),
        (8192, 768, 2304),
        // ModernBERT-large: Wqkv, attention Wo, Wi, MLP Wo.
        (4096, 1024, 3072),
        (4096, 1024, 1024),
        (4096, 1024, 5248),
        (4096, 2624, 1024),
    ] {
        let flop = 2.0 * (m * k * n) as f64;
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let f32s = best_of(reps, || {
            let _ = x.matmul(&w.t().unwrap()).unwrap();
        });
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Into a reused output, as the forward runs it (a fresh 37 MB output's page faults cost
        // the largest shape 15%).
        let f32_kernel = match PackedF32::pack(&ws, n, k) {
            Some(packed) => format!("{:.0}", reused_output(reps, &packed, &xs, m, n)),
            None => "n/a".into(),
        };
        // As in a forward, where each layer's weights were last touched a whole model ago:
        // round-robin over copies that together exceed the last-level cache.
        let copies: Vec<PackedF32> = (0..COLD_COPIES)
            .filter_map(|_| PackedF32::pack(&ws, n, k))
            .collect();
        let f32_cold = if copies.is_empty() {
            "n/a".into()
        } else {
            // Into one reused output too, so this column differs from the last only in the weights.
            let (mut next, mut out) = (0, vec![0f32; m * n]);
            format!(
                "{:.0}",
                flop / best_of(reps, || {
                    next = (next + 1) % copies.len();
                    copies[next].matmul_add_into(&xs, m, None, None, &mut out);
                }) / 1e9
            )
        };
        let (xb, wb) = (
            x.to_dtype(DType::BF16).unwrap(),
            w.to_dtype(DType::BF16).unwrap(),
        );
        let bf16s = best_of(reps, || {
            let _ = xb.matmul(&wb.t().unwrap()).unwrap();
        });
        let kernel = if available() {
            let packed = PackedWeight::pack(&ws, n, k);
            let fresh =
                flop / best_of(reps, || {
                    let _ = packed.matmul(&xs, m, None);
                }) / 1e9;
            // As the forward runs it: the output written into a buffer reused across calls.
            let mut out = vec![0f32; m * n];
            let reused =
                flop / best_of(reps, || {
                    packed.matmul_add_into(&xs, m, None, None, &mut out)
                }) / 1e9;
            format!("{fresh:.0} | {reused:.0}")
        } else {
            "n/a (no avx512bf16) | n/a".into()
        };
        let amx = if mbpipe_model::amx_bf16_gemm::available() {
            let packed = PackedAmxBf16::pack(&ws, n, k);
            format!("{:.0}", reused_output(reps, &packed, &xs, m, n))
        } else {
            "n/a (no amx-bf16)".into()
        };
        let int8 = [
            Int8Kernel::Avx2,
            Int8Kernel::Avx512Vnni,
            Int8Kernel::AvxVnni,
            Int8Kernel::Tiles,
            Int8Kernel::Avx512Bw,
            Int8Kernel::ArmDot,
            Int8Kernel::ArmMatrix,
        ]
        .map(|kernel| {
            if kernel.available() {
                let packed = PackedI8::pack_for(kernel, &ws, n, k);
                format!("{:.0}", reused_output(reps, &packed, &xs, m, n))
            } else {
                "n/a".into()
            }
        })
        .join(" | ");
        println!(
            "{m} x {k} x {n} | {:.0} | {f32_kernel} | {f32_cold} | {:.0} | {kernel} | {amx} | {int8}",
            flop / f32s / 1e9,
            flop / bf16s / 1e9
        );
    }
}
