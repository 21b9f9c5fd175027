//! tract-linalg GEMM benchmark on ModernBERT linear-layer shapes.
//!
//! Computes y = x · Wᵀ, x: m×k row-major activations, W: n×k row-major weight, y: m×n row-major.
//!
//! tract's convention is C(M×N) = A(M×K) · B(K×N) with A the (pre-packed) weight. So the weight
//! W (n×k) is tract's A (tract M = our n, packed once before timing), the activations x are tract's
//! B (tract N = our m, packed on every call, inside the timed region), and C = yᵀ is stored with
//! strides straight into row-major y. This is how tract itself lowers a linear layer.
//!
//! Timed per call: activation packing + kernel run (+ the store into y). Weight packing is not.
//!
//! Usage: tract-gemm-bench [reps=5] [filter]
//!   reps   best-of-`reps` timed runs after one warm-up run.
//!   filter only run shapes whose label contains this substring (e.g. "base").
//! Env: TRACT_AMX_BF16=1 makes tract's own f32 dispatch pick the lossy AMX-bf16 kernel (off by
//! default); the `bf16` column always forces that kernel explicitly.
//! Note: the "x packing %" in the kernel list is packing all of x alone, single-threaded, as a share
//! of the 1T time. f16 with an f16 accumulator exists only as tract's generic Rust kernel, which
//! tract flags as emulated on x86 (no hardware f16 arithmetic used), so it is not benchmarked.

use std::time::Instant;

use tract_data::internal::*;
use tract_data::prelude::f16;
use tract_linalg::mmm::{AsInputValue, FusedSpec, MMMInputValue, MatMatMul, Query, ScratchSpace};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_linalg::MmmDispatch;

/// (label, m = tokens, k = in features, n = out features)
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("base Wqkv", 4096, 768, 2304),
    ("base Wo", 4096, 768, 768),
    ("base mlp.Wo", 4096, 1152, 768),
    ("base Wqkv m333", 333, 768, 2304),
    ("base Wo m100", 100, 768, 768),
    ("large Wqkv", 4096, 1024, 3072),
    ("large Wo", 4096, 1024, 1024),
    ("large mlp.Wi", 4096, 1024, 5248),
    ("large mlp.Wo", 4096, 2624, 1024),
];

/// Correctness-check shape (m, k, n).
const CHECK_SHAPE: (usize, usize, usize) = (64, 96, 80);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Prec {
    /// f32 in, f32 accumulate: tract's default f32 dispatch.
    F32,
    /// f32 in, truncated to bf16 at pack time, f32 accumulate (AMX TDPBF16PS kernel, forced).
    Bf16Amx,
    /// f16 in (weights and activations), f32 accumulate (F16C convert in the f32 kernels).
    F16,
    /// i8 × i8 → i32.
    I8,
}
const PRECS: [Prec; 4] = [Prec::F32, Prec::Bf16Amx, Prec::F16, Prec::I8];

impl Prec {
    fn label(self) -> &'static str {
        match self {
            Prec::F32 => "f32",
            Prec::Bf16Amx => "bf16(AMX)",
            Prec::F16 => "f16→f32acc",
            Prec::I8 => "i8→i32",
        }
    }
    fn in_dt(self) -> DatumType {
        match self {
            Prec::F32 | Prec::Bf16Amx => DatumType::F32,
            Prec::F16 => DatumType::F16,
            Prec::I8 => DatumType::I8,
        }
    }
    fn out_dt(self) -> DatumType {
        if self == Prec::I8 {
            DatumType::I32
        } else {
            DatumType::F32
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// One thread, one tract call.
    T1,
    /// 2 threads inside one tract call: tract-linalg's own `multithread-mm` executor (a 2-thread
    /// rayon pool, splits the panel grid; activation packing also parallel when big enough).
    T2Tract,
    /// 2 threads by hand: m rows split in two halves, each half packed and run single-threaded on
    /// its own thread (std::thread::scope; the calling thread does one half).
    T2Split,
}
const MODES: [Mode; 3] = [Mode::T1, Mode::T2Tract, Mode::T2Split];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::T1 => "1T",
            Mode::T2Tract => "2T tract-mt",
            Mode::T2Split => "2T split-m",
        }
    }
}

/// The kernel and packing to use for a precision and shape, or why there is none.
fn select(
    prec: Prec,
    m: usize,
    k: usize,
    n: usize,
) -> Result<(Box<dyn MatMatMul>, usize), String> {
    let dispatch = MmmDispatch::native();
    // tract dims: M = n (weight rows), K = k, N = m (tokens).
    let query = match prec {
        Prec::F32 => Query::plain(DatumType::F32, Some(n), Some(k), Some(m)),
        Prec::I8 => Query::plain(DatumType::I32, Some(n), Some(k), Some(m)),
        Prec::F16 => Query {
            weight: DatumType::F16.into(),
            activation: DatumType::F16,
            accumulators: tvec!(DatumType::F32),
            store: Some(DatumType::F32),
            allow_extractor: false,
            m: Some(n),
            k: Some(k),
            n: Some(m),
        },
        Prec::Bf16Amx => {
            // Opt-in kernel: tract only picks it with TRACT_AMX_BF16=1, so name it explicitly.
            let ker = dispatch
                .runnable()
                .iter()
                .find(|k| k.name() == "avx512amx_mmm_f32_16x16")
                .ok_or("avx512amx_mmm_f32_16x16 not runnable here (no AMX-BF16 / not built)")?;
            let ix = ker
                .packings()
                .iter()
                .position(|(a, _)| a.to_string().to_lowercase().contains("bf16"))
                .ok_or("no bf16 packing on avx512amx_mmm_f32_16x16")?;
            return Ok((ker.clone(), ix));
        }
    };
    match dispatch.pick(&query) {
        Some((ker, ix, None)) => Ok((ker, ix)),
        Some((ker, _, Some(pe))) => {
            Err(format!("only {} via panel extractor {} (weights not prepackable)", ker.name(), pe.name))
        }
        None => Err("no suitable kernel".into()),
    }
}

/// Deterministic pseudo-random data.
struct Lcg(u64);
impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn unit(&mut self) -> f32 {
        (self.next_u32() as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }
}

fn random_tensor(dt: DatumType, rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut rng = Lcg(seed);
    let len = rows * cols;
    match dt {
        DatumType::F32 => {
            let v: Vec<f32> = (0..len).map(|_| rng.unit()).collect();
            Tensor::from_shape(&[rows, cols], &v).unwrap()
        }
        DatumType::F16 => {
            let v: Vec<f16> = (0..len).map(|_| f16::from_f32(rng.unit())).collect();
            Tensor::from_shape(&[rows, cols], &v).unwrap()
        }
        DatumType::I8 => {
            let v: Vec<i8> = (0..len).map(|_| (rng.next_u32() >> 24) as u8 as i8).collect();
            Tensor::from_shape(&[rows, cols], &v).unwrap()
        }
        _ => unreachable!(),
    }
}

/// A ready-to-run problem: weights packed once, activations and output allocated.
struct Case {
    prec: Prec,
    m: usize,
    k: usize,
    n: usize,
    mmm: Box<dyn MatMatMul>,
    packing: usize,
    w_packed: Box<dyn MMMInputValue>,
    x: Tensor,
    w: Tensor,
    y: Tensor,
    scratch: [Box<dyn ScratchSpace>; 2],
}

impl Case {
    fn new(prec: Prec, m: usize, k: usize, n: usize, seed: u64) -> Result<Case, String> {
        let (mmm, packing) = select(prec, m, k, n)?;
        let x = random_tensor(prec.in_dt(), m, k, seed);
        let w = random_tensor(prec.in_dt(), n, k, seed ^ 0x9e3779b97f4a7c15);
        // W is n×k: k_axis 1, mn_axis 0. Packed once, like weights at model load.
        let w_packed = mmm.packings()[packing]
            .0
            .prepare_one(&w, 1, 0)
            .map_err(|e| format!("packing W: {e:?}"))?;
        let y = Tensor::zero_dt(prec.out_dt(), &[m, n]).unwrap();
        let scratch = unsafe { [mmm.allocate_scratch_space(), mmm.allocate_scratch_space()] };
        Ok(Case { prec, m, k, n, mmm, packing, w_packed, x, w, y, scratch })
    }

    fn kernel_desc(&self) -> String {
        let (a, b) = &self.mmm.packings()[self.packing];
        format!("{} (A={a}, B={b})", self.mmm.name())
    }

    /// y[rows r0..r0+rows] = x[r0..r0+rows] · Wᵀ: pack that slice of x, run the kernel.
    fn run_rows(
        mmm: &dyn MatMatMul,
        packing: usize,
        w_packed: &dyn MMMInputValue,
        x: &Tensor,
        y: &Tensor,
        k: usize,
        n: usize,
        r0: usize,
        rows: usize,
        scratch: &mut dyn ScratchSpace,
    ) {
        let xs = [rows, k];
        let xst = [k as isize, 1];
        let ys = [rows, n];
        let yst = [n as isize, 1];
        unsafe {
            let xv = TensorView::from_bytes(x, (r0 * k * x.datum_type().size_of()) as isize, &xs, &xst);
            let yv = TensorView::from_bytes(y, (r0 * n * y.datum_type().size_of()) as isize, &ys, &yst);
            // x slice is rows×k: k_axis 1, mn_axis 0.
            let x_packed = mmm.packings()[packing].1.prepare_one_view(&xv, 1, 0).unwrap();
            // C = yᵀ: tract row (M = out feature) stride 1 item, tract col (N = token) stride n items.
            let store = mmm
                .c_from_data_and_strides(y.datum_type().size_of(), 1, n as isize)
                .wrap(&yv);
            let ops = [
                FusedSpec::AddMatMul {
                    a: AsInputValue::Borrowed(w_packed),
                    b: AsInputValue::Borrowed(&*x_packed),
                    packing,
                },
                FusedSpec::Store(store),
            ];
            mmm.run_with_scratch_space(n, rows, scratch, &ops).unwrap();
        }
    }

    fn run(&mut self, mode: Mode, exec2: &Executor) {
        let (mmm, packing, w) = (&*self.mmm, self.packing, &*self.w_packed);
        let (x, y, k, n, m) = (&self.x, &self.y, self.k, self.n, self.m);
        let [s0, s1] = &mut self.scratch;
        match mode {
            Mode::T1 => multithread_tract_scope(Executor::SingleThread, || {
                Self::run_rows(mmm, packing, w, x, y, k, n, 0, m, &mut **s0)
            }),
            Mode::T2Tract => multithread_tract_scope(exec2.clone(), || {
                Self::run_rows(mmm, packing, w, x, y, k, n, 0, m, &mut **s0)
            }),
            Mode::T2Split => {
                let h = m.div_ceil(2);
                std::thread::scope(|sc| {
                    sc.spawn(|| {
                        multithread_tract_scope(Executor::SingleThread, || {
                            Self::run_rows(mmm, packing, w, x, y, k, n, h, m - h, &mut **s1)
                        })
                    });
                    multithread_tract_scope(Executor::SingleThread, || {
                        Self::run_rows(mmm, packing, w, x, y, k, n, 0, h, &mut **s0)
                    });
                });
            }
        }
    }

    /// Best time in seconds over `reps` runs after one warm-up.
    fn bench(&mut self, mode: Mode, exec2: &Executor, reps: usize) -> f64 {
        self.run(mode, exec2);
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            self.run(mode, exec2);
            best = best.min(t.elapsed().as_secs_f64());
        }
        best
    }

    /// Best time in seconds of packing all of x alone (single thread), to show its share.
    fn bench_pack(&self, reps: usize) -> f64 {
        let fmt = &self.mmm.packings()[self.packing].1;
        multithread_tract_scope(Executor::SingleThread, || {
            let mut best = f64::INFINITY;
            for _ in 0..reps + 1 {
                let t = Instant::now();
                let p = fmt.prepare_one(&self.x, 1, 0).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
                drop(p);
            }
            best
        })
    }

    /// max |y - ref| / max |ref|, ref computed in f64 from the (rounded) inputs the kernel sees.
    fn check(&self) -> (f64, f64) {
        let (m, k, n) = (self.m, self.k, self.n);
        let to_f64 = |t: &Tensor, bf16: bool| -> Vec<f64> {
            let p = t.try_as_plain_ram().unwrap();
            match t.datum_type() {
                DatumType::F32 => p
                    .as_slice::<f32>()
                    .unwrap()
                    .iter()
                    .map(|&v| if bf16 { f32::from_bits(v.to_bits().wrapping_add(0x7fff + ((v.to_bits() >> 16) & 1)) & 0xffff_0000) } else { v } as f64)
                    .collect(),
                DatumType::F16 => p.as_slice::<f16>().unwrap().iter().map(|v| v.to_f64()).collect(),
                DatumType::I8 => p.as_slice::<i8>().unwrap().iter().map(|&v| v as f64).collect(),
                DatumType::I32 => p.as_slice::<i32>().unwrap().iter().map(|&v| v as f64).collect(),
                _ => unreachable!(),
            }
        };
        let bf16 = self.prec == Prec::Bf16Amx;
        let (x, w, y) = (to_f64(&self.x, bf16), to_f64(&self.w, bf16), to_f64(&self.y, false));
        // Also the error against the unrounded f32 inputs (only differs for bf16).
        let (x32, w32) = (to_f64(&self.x, false), to_f64(&self.w, false));
        let (mut err, mut err32, mut max) = (0f64, 0f64, 0f64);
        for i in 0..m {
            for j in 0..n {
                let (mut r, mut r32) = (0f64, 0f64);
                for l in 0..k {
                    r += x[i * k + l] * w[j * k + l];
                    r32 += x32[i * k + l] * w32[j * k + l];
                }
                err = err.max((y[i * n + j] - r).abs());
                err32 = err32.max((y[i * n + j] - r32).abs());
                max = max.max(r.abs());
            }
        }
        (err / max, err32 / max)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).map(|s| s.parse().expect("reps must be an integer")).unwrap_or(5);
    let filter = args.get(2).cloned().unwrap_or_default();
    let exec2 = Executor::multithread(2);

    let dispatch = MmmDispatch::native();
    println!("# tract-linalg 0.23.9 GEMM bench: y = x·Wᵀ, best of {reps} after 1 warm-up");
    println!();
    println!("ISA detected by tract: {:?}", tract_linalg::isa::native());
    let mut names: Vec<&str> = dispatch.runnable().iter().map(|k| k.name()).collect();
    names.sort();
    println!("Runnable mmm kernels ({}): {}", names.len(), names.join(", "));
    println!(
        "Threads: 1T = single thread; 2T tract-mt = tract-linalg's own multithread-mm executor \
         (2-thread rayon pool); 2T split-m = m rows split in two halves on 2 std threads, each \
         packing its half of x and running single-threaded."
    );
    println!();

    // Correctness.
    let (cm, ck, cn) = CHECK_SHAPE;
    println!("## Correctness ({cm}x{ck}x{cn}, vs naive f64 on the kernel's rounded inputs)");
    println!();
    tract_linalg::multithread::set_threading_panel_threshold(0); // make tract-mt really thread
    for prec in PRECS {
        let mut case = match Case::new(prec, cm, ck, cn, 42) {
            Ok(c) => c,
            Err(e) => {
                println!("- {:<11} n/a: {e}", prec.label());
                continue;
            }
        };
        for mode in MODES {
            case.y = Tensor::zero_dt(prec.out_dt(), &[cm, cn]).unwrap();
            case.run(mode, &exec2);
            let (rel, rel32) = case.check();
            let (ok, bar) = match prec {
                Prec::I8 => (rel == 0.0, "exact".to_string()),
                _ => (rel < 1e-4, "rel<1e-4".to_string()),
            };
            let extra = if prec == Prec::Bf16Amx {
                format!(" (vs unrounded f32 inputs: {rel32:.2e})")
            } else {
                String::new()
            };
            println!(
                "- {:<11} {:<12} {}  rel.err {rel:.2e} [{bar}]{extra}  kernel {}",
                prec.label(),
                mode.label(),
                if ok { "PASS" } else { "FAIL" },
                case.mmm.name()
            );
        }
    }
    tract_linalg::multithread::set_threading_panel_threshold(64); // tract's default
    println!();

    // Throughput.
    let mut header = String::from("| shape (m x k x n) |");
    let mut sep = String::from("|---|");
    for prec in PRECS {
        for mode in MODES {
            header += &format!(" {} {} |", prec.label(), mode.label());
            sep += "---:|";
        }
    }
    let mut rows = vec![];
    let mut kernels = vec![];
    for (ix, &(label, m, k, n)) in SHAPES.iter().enumerate() {
        if !label.contains(&filter) {
            continue;
        }
        let flop = 2.0 * m as f64 * k as f64 * n as f64;
        let mut row = format!("| {label} {m}x{k}x{n} |");
        let mut kline = format!("- {label} {m}x{k}x{n}:");
        for prec in PRECS {
            match Case::new(prec, m, k, n, ix as u64) {
                Ok(mut case) => {
                    let tp = case.bench_pack(reps);
                    let mut t1 = 0.0;
                    for mode in MODES {
                        let t = case.bench(mode, &exec2, reps);
                        if mode == Mode::T1 {
                            t1 = t;
                        }
                        row += &format!(" {:.1} |", flop / t / 1e9);
                        eprintln!("{label} {} {}: {:.2} ms", prec.label(), mode.label(), t * 1e3);
                    }
                    kline += &format!(
                        " {} → {}, x packing {:.0}% of 1T time;",
                        prec.label(),
                        case.kernel_desc(),
                        100.0 * tp / t1
                    );
                }
                Err(e) => {
                    kline += &format!(" {} → n/a ({e});", prec.label());
                    for _ in MODES {
                        row += " n/a |";
                    }
                }
            }
        }
        rows.push(row);
        kernels.push(kline);
    }
    println!("## GFLOP/s (2·m·k·n / best time; activation packing + kernel timed, W prepacked)");
    println!();
    println!("{header}");
    println!("{sep}");
    for r in rows {
        println!("{r}");
    }
    println!();
    println!("## Kernels picked (tract A = W packed once, B = x packed per call)");
    println!();
    for k in kernels {
        println!("{k}");
    }
}
