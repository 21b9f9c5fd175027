//! `mbpipe run` through the library on a shipped sample model: the manifest reports the time the
//! workers spent inside the model and the model-only rate, so a reader can tell whether reading,
//! tokenizing and writing keep up with compute.

use std::path::Path;

use mbpipe_model::{DeviceSpec, Precision};
use mbpipe_pipeline::{cli, RunOptions};
use serde_json::Value;

#[test]
fn manifest_reports_model_seconds_and_model_only_rate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("sample_data/models/moderation");
    let texts = std::fs::read_to_string(root.join("sample_data/comments.jsonl")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let first: String = texts.lines().take(40).map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, first).unwrap();
    let out = tmp.path().join("out");
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[input]\npath = '{}'\ntext = \"text\"\n\n[output]\npath = '{}'\n\n\
             [[tasks]]\nname = \"moderation\"\nkind = \"classify\"\nmodel = '{}'\nmax_length = 128\n",
            input.display(),
            out.display(),
            model.display()
        ),
    )
    .unwrap();
    let devices = vec![DeviceSpec::Cpu];
    let workers = devices.len() as f64;
    let outcome = cli::run(RunOptions {
        pipeline,
        devices,
        precision: Precision::F32,
        threads: None,
        // Several batches, so the clock sums more than one forward.
        max_batch_tokens: Some(256),
        shard: None,
        overwrite: false,
    })
    .unwrap();
    assert_eq!(outcome.rows, 40);
    assert!(outcome.tokens > 0);

    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("_manifest.json")).unwrap())
            .unwrap();
    let field = |name: &str| {
        m.get(name)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("_manifest.json has no number `{name}`: {m}"))
    };
    let (run_seconds, model_seconds) = (field("run_seconds"), field("model_seconds"));
    let (rate, model_rate) = (field("tokens_per_second"), field("model_tokens_per_second"));
    assert!(model_seconds > 0.0, "model_seconds {model_seconds}");
    assert!(model_rate > 0.0, "model_tokens_per_second {model_rate}");
    // The workers' time inside forwards fits in the run's wall clock, per worker.
    assert!(
        model_seconds <= run_seconds * workers + 1e-3,
        "model_seconds {model_seconds} > run_seconds {run_seconds} x {workers} workers"
    );
    let tokens = m["tokens"].as_u64().unwrap() as f64;
    let expected = tokens / (model_seconds / workers);
    assert!(
        (model_rate - expected).abs() <= 1e-6 * expected,
        "model_tokens_per_second {model_rate}, tokens / (model_seconds / workers) {expected}"
    );
    // So the model-only rate is never below the end-to-end rate (same tokens, less time).
    assert!(
        model_rate >= rate * (1.0 - 1e-6),
        "model-only {model_rate} < end to end {rate}"
    );
}
