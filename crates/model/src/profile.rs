//! Opt-in wall-clock accounting of the forward pass by stage (`forward_profile` example,
//! benches). Off by default: each stage then costs one relaxed atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The stages the encoder reports.
pub const STAGES: [&str; 9] = [
    "embeddings",
    "layer norms",
    "Wqkv linear",
    "qkv split + RoPE",
    "attention",
    "attn out reshape + Wo linear",
    "Wi linear (f32 kernel: with GELU * gate)",
    "GELU * gate (other kernels)",
    "MLP Wo linear + residuals",
];

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; STAGES.len()] = [const { AtomicU64::new(0) }; STAGES.len()];

/// Starts (or stops) accounting and clears the counters.
pub fn enable(on: bool) {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
    ENABLED.store(on, Ordering::Relaxed);
}

/// Seconds spent per stage since [`enable`].
pub fn report() -> Vec<(&'static str, f64)> {
    STAGES
        .iter()
        .zip(&NANOS)
        .map(|(s, n)| (*s, n.load(Ordering::Relaxed) as f64 * 1e-9))
        .collect()
}

/// Runs `f`, charging its time to stage `stage` when accounting is on.
#[inline]
pub(crate) fn timed<T>(stage: usize, f: impl FnOnce() -> T) -> T {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let out = f();
    NANOS[stage].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}
