//! Shared helpers: the fixture, the binary, temp dirs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};

/// The shared reference folder: `MBPIPE_SHARED`, else `../shared` beside the repository.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("MBPIPE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// `../shared/fixtures/modernbert-tiny`, or `None` (with a message saying why the test skips).
pub fn fixture() -> Option<Fixture> {
    let dir = shared_dir().join("fixtures/modernbert-tiny");
    if !dir.join("expected.safetensors").is_file() {
        eprintln!(
            "SKIPPED: fixture not found at {} (set MBPIPE_SHARED to the shared/ folder)",
            dir.display()
        );
        return None;
    }
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let texts = std::fs::read_to_string(dir.join("texts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    Some(Fixture {
        dir,
        expected,
        json,
        texts,
    })
}

pub struct Fixture {
    pub dir: PathBuf,
    pub expected: std::collections::HashMap<String, Tensor>,
    pub json: serde_json::Value,
    pub texts: Vec<String>,
}

impl Fixture {
    pub fn vec(&self, name: &str) -> Option<Vec<f32>> {
        self.expected.get(name).map(|t| {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap()
        })
    }
    pub fn model(&self, which: &str) -> String {
        self.dir.join(which).display().to_string()
    }
    /// Fill-mask top 5 of text `i`, per mask: (token id, probability).
    pub fn top5(&self, i: usize) -> Vec<Vec<(u32, f32)>> {
        self.json["texts"][i]["fill_mask"]
            .as_array()
            .map(|masks| {
                masks
                    .iter()
                    .map(|m| {
                        m["top5"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|p| {
                                (
                                    p["id"].as_u64().unwrap() as u32,
                                    p["score"].as_f64().unwrap() as f32,
                                )
                            })
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = v.iter().map(|x| ((x - m) as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| (x / s) as f32).collect()
}

pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let d = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        d < tol,
        "{what}: differs by {d} (tolerance {tol})\n got {got:?}\nwant {want:?}"
    );
}

/// Runs the built `mbpipe` binary in `cwd`.
pub fn mbpipe(cwd: &Path, args: &[&str]) -> Output {
    mbpipe_with_env(cwd, args, &[])
}

/// [`mbpipe`] with the variables `vars` set.
pub fn mbpipe_with_env(cwd: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mbpipe"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("RUST_LOG")
        .envs(vars.iter().copied())
        .output()
        .expect("cannot run mbpipe")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "mbpipe failed ({:?}):\n{}",
        o.status.code(),
        stderr(&o)
    );
    stdout(&o)
}
