//! Self-contained engine tests: random tiny models written by the tests themselves.

use std::collections::HashMap;
use std::path::Path;

mod common;

use common::max_abs_diff;
use mbpipe_model::synthetic::{Synthetic, SyntheticHead};
use mbpipe_model::{DType, Device, ModelFiles, ModernBert, PackedBatch, Pooling, Tensor};

const VOCAB: usize = 97;
const HIDDEN: usize = 32;
const INTER: usize = 48;
const LAYERS: usize = 3;
/// Same-dtype f32 computations of one sequence in different batches agree to this.
const INVARIANCE_TOL: f32 = 2e-5;

/// The tests' tiny model in the published layout: a classifier of `labels` labels, or a masked
/// LM when 0.
fn tiny(labels: usize) -> Synthetic {
    Synthetic {
        hidden: HIDDEN,
        intermediate: INTER,
        heads: 4,
        layers: LAYERS,
        vocab: VOCAB,
        global_every: 2,
        local_attention: 8,
        max_positions: 512,
        head: match labels {
            0 => SyntheticHead::MaskedLm,
            n => SyntheticHead::Classifier(n),
        },
        pooling: "cls",
        special_ids: (1, 2),
        weight_std: 0.2,
        norm_noise: 0.1,
        tokenizer_json: TOKENIZER_JSON.into(),
    }
}

fn published_config(labels: usize) -> serde_json::Value {
    tiny(labels).config()
}

fn random_weights(labels: usize) -> HashMap<String, Tensor> {
    tiny(labels).weights()
}

const TOKENIZER_JSON: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
 "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
 "model":{"type":"WordLevel","vocab":{"[UNK]":0,"[CLS]":1,"[SEP]":2},"unk_token":"[UNK]"}}"#;

fn write_model(dir: &Path, config: &serde_json::Value, weights: &HashMap<String, Tensor>) {
    tiny(0).write_with(dir, config, weights).unwrap();
}

/// The published-layout tiny model with seed-0 weights, loaded (the folder lives as long as the
/// returned guard).
fn tiny_model() -> (tempfile::TempDir, ModernBert) {
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), &published_config(0), &random_weights(0));
    let model = load(tmp.path()).unwrap();
    (tmp, model)
}

fn load(dir: &Path) -> Result<ModernBert, mbpipe_model::ModelError> {
    let files = ModelFiles::from_dir(dir)?;
    ModernBert::load(&files, &Device::Cpu, DType::F32)
}

fn sequence(len: usize, seed: u32) -> Vec<u32> {
    let mut ids = vec![1];
    ids.extend(
        (0..len.saturating_sub(2) as u32).map(|i| 3 + (i * 31 + seed * 17) % (VOCAB as u32 - 3)),
    );
    ids.push(2);
    ids
}

#[test]
fn output_shapes() {
    let (_tmp, model) = tiny_model();
    let batch = PackedBatch::from_sequences(&[sequence(5, 1), sequence(40, 2), sequence(2, 3)]);
    let hidden = model.encode(&batch).unwrap();
    assert_eq!(hidden.dims(), &[47, HIDDEN]);
    assert_eq!(
        model.pool(&hidden, &batch, Pooling::Mean).unwrap().dims(),
        &[3, HIDDEN]
    );
    assert_eq!(
        model.mask_logits(&hidden, &[0, 10]).unwrap().dims(),
        &[2, VOCAB]
    );
    assert!(
        model.classify(&hidden, &batch).is_err(),
        "a masked LM has no classifier"
    );
}

/// A sequence's output does not depend on its batch neighbours or its place in the batch, for
/// lengths inside and far beyond the local window (banded attention).
#[test]
fn padding_free_outputs_do_not_depend_on_neighbours() {
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), &published_config(3), &random_weights(3));
    let model = load(tmp.path()).unwrap();
    let seqs: Vec<Vec<u32>> = [3, 9, 200, 17, 450, 1, 64]
        .iter()
        .enumerate()
        .map(|(i, &l)| sequence(l, i as u32))
        .collect();
    let together = PackedBatch::from_sequences(&seqs);
    let h_all = model.encode(&together).unwrap();
    let logits_all = model.classify(&h_all, &together).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let alone = PackedBatch::from_sequences(std::slice::from_ref(s));
        let h = model.encode(&alone).unwrap();
        let r = together.range(i);
        let d = max_abs_diff(&h, &h_all.narrow(0, r.start, r.len()).unwrap());
        assert!(
            d < INVARIANCE_TOL,
            "sequence {i} (len {}): hidden differs by {d}",
            s.len()
        );
        let d = max_abs_diff(
            &model.classify(&h, &alone).unwrap().get(0).unwrap(),
            &logits_all.get(i).unwrap(),
        );
        assert!(d < INVARIANCE_TOL, "sequence {i}: logits differ by {d}");
    }
    // Another order and grouping gives the same per-sequence outputs.
    let reversed: Vec<Vec<u32>> = seqs.iter().rev().cloned().collect();
    let rb = PackedBatch::from_sequences(&reversed);
    let h_rev = model.encode(&rb).unwrap();
    for i in 0..seqs.len() {
        let (a, b) = (together.range(i), rb.range(seqs.len() - 1 - i));
        let d = max_abs_diff(
            &h_all.narrow(0, a.start, a.len()).unwrap(),
            &h_rev.narrow(0, b.start, b.len()).unwrap(),
        );
        assert!(
            d < INVARIANCE_TOL,
            "sequence {i}: order changed hidden by {d}"
        );
    }
}

/// A random classifier with `heads` heads of `hidden / heads` columns (128 wide, local window
/// 64), written to a folder of its own: heads 64 wide take the attention's fast products, 16
/// wide keep f32.
fn model_with_heads(heads: usize) -> (tempfile::TempDir, ModelFiles) {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Synthetic {
        hidden: 128,
        heads,
        local_attention: 64,
        ..tiny(3)
    };
    spec.write(tmp.path()).unwrap();
    let files = ModelFiles::from_dir(tmp.path()).unwrap();
    (tmp, files)
}

/// Per sequence of a batch of lengths across query and key blocks of 32 (and the 12-row query
/// tiles, the 16-key panels) and beyond the local window: the largest difference between its
/// hidden states in the batch and alone, with its length.
fn differences_alone_and_together(model: &ModernBert) -> Vec<(usize, f32)> {
    let seqs: Vec<Vec<u32>> = [3, 33, 200, 1, 64, 97]
        .iter()
        .enumerate()
        .map(|(i, &l)| sequence(l, i as u32))
        .collect();
    let together = PackedBatch::from_sequences(&seqs);
    let all = model.encode(&together).unwrap();
    let alone = |s: &Vec<u32>| model.encode(&PackedBatch::from_sequences(std::slice::from_ref(s)));
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            let r = together.range(i);
            let part = all.narrow(0, r.start, r.len()).unwrap();
            (s.len(), max_abs_diff(&alone(s).unwrap(), &part))
        })
        .collect()
}

/// Where the linear layers run on bf16 or int8 hardware, the attention's two products run in
/// bf16 too: on AMX tiles with the tiles (`bf16`, and `int8` on AMX-INT8), on `vdpbf16ps` where
/// bf16 runs on it (`bf16`, and `int8` on 512-bit VNNI where `vdpbf16ps` outruns the f32 FMA:
/// Zen 4/5); `int8` on 512-bit VNNI elsewhere (an Intel Xeon without tiles) runs QKᵀ in int8 on
/// VNNI; all for heads 64 wide (not 16: whole tiles of 32 columns, the int8 micro-kernels' 64),
/// and the load line says so; elsewhere they stay f32. A sequence's hidden states do not depend
/// on its neighbours or its place in the batch (a row or key block shared with another
/// sequence, or its mean key, would show here).
#[test]
fn attention_products_run_in_bf16_where_the_linear_layers_do() {
    use mbpipe_model::int8_gemm::Int8Kernel;
    use mbpipe_model::{issue_rate, CpuBf16};
    let (tiles, dot) = (
        mbpipe_model::amx_bf16_gemm::available(),
        mbpipe_model::bf16_gemm::available(),
    );
    if !tiles && !dot {
        eprintln!("SKIPPED: this CPU (or OS) runs neither AMX-BF16 tiles nor AVX512-BF16");
        return;
    }
    let engine = |m: &ModernBert| {
        let kernels = m.kernels();
        let int8 = kernels.contains("attention's QKᵀ in int8 on VNNI");
        ["AMX tiles", "vdpbf16ps"]
            .into_iter()
            .find(|e| kernels.contains(&format!("attention's products in bf16 on {e}")))
            .or(int8.then_some("int8 VNNI"))
    };
    for (heads, head_dim) in [(2, 64), (8, 16)] {
        let (tmp, files) = model_with_heads(heads);
        let bf16 = |path| ModernBert::load_with_cpu_bf16(&files, &Device::Cpu, DType::BF16, path);
        let wide = head_dim == 64;
        let mut models = Vec::new();
        for (runs, path, name) in [
            (tiles, CpuBf16::Tiles, "AMX tiles"),
            (dot, CpuBf16::DotProduct, "vdpbf16ps"),
        ] {
            if runs {
                let model = bf16(path).unwrap();
                assert_eq!(engine(&model), wide.then_some(name), "heads of {head_dim}");
                models.push(model);
            }
        }
        assert_eq!(engine(&load(tmp.path()).unwrap()), None, "f32");
        for kernel in Int8Kernel::all_available() {
            let int8 = ModernBert::load_int8_on(&files, &Device::Cpu, Some(kernel)).unwrap();
            let expected = match kernel {
                Int8Kernel::Tiles if wide => Some("AMX tiles"),
                Int8Kernel::Avx512Vnni if wide && dot && issue_rate::dot_product_pays() => {
                    Some("vdpbf16ps")
                }
                Int8Kernel::Avx512Vnni if wide => Some("int8 VNNI"),
                _ => None,
            };
            assert_eq!(
                engine(&int8),
                expected,
                "int8 on {kernel:?}, heads of {head_dim}"
            );
            if expected == Some("int8 VNNI") {
                models.push(int8);
            }
        }
        if !wide {
            continue;
        }
        // Not bit for bit: a row's f32 sums differ in the last bits with its place in a block
        // of 32 rows (whole blocks add the residual in the tiles, before the products), and one
        // bf16 rounding that flips moves this random model's outputs by up to ~1e-2; another
        // sequence's keys, values or rows move them by O(1).
        for model in &models {
            for (i, (len, d)) in differences_alone_and_together(model)
                .into_iter()
                .enumerate()
            {
                assert!(
                    d < 2e-2,
                    "{:?}: sequence {i} (len {len}): hidden differs by {d}",
                    engine(model)
                );
            }
        }
    }
}

/// On CPUs without AVX-512, `int8` runs the attention's QKᵀ in int8 as well, for heads 64
/// wide (on AVX-VNNI where the CPU has it, else on `vpmaddwd`, with PV in 16-bit integers on
/// either), and the load line says which; 16-wide heads keep the f32 products. A sequence's hidden states are those it has alone, bit
/// for bit (int8 rounds each row and each sequence's keys on their own; a row, key panel or
/// mean key shared with another sequence would show here). (Accuracy: `fused_attention`'s unit
/// tests for the attention, the held-out gates of `tests/low_precision.rs` for the model.)
#[test]
#[cfg(target_arch = "x86_64")]
fn int8_attention_runs_on_avx2_where_the_linear_layers_do() {
    use mbpipe_model::int8_gemm::Int8Kernel;
    if std::arch::is_x86_feature_detected!("avx512f")
        || !Int8Kernel::all_available().contains(&Int8Kernel::Avx2)
    {
        eprintln!(
            "SKIPPED: the attention runs on AVX-512 here, or the CPU has no AVX2 int8 kernel"
        );
        return;
    }
    let engine = if std::arch::is_x86_feature_detected!("avxvnni") {
        "attention's QKᵀ in int8 on VNNI and PV in 16-bit integers on vpdpwssd"
    } else {
        "attention's QKᵀ in int8 and PV in 16-bit integers on vpmaddwd"
    };
    for (heads, head_dim) in [(2, 64), (8, 16)] {
        let (tmp, files) = model_with_heads(heads);
        let int8 = ModernBert::load_int8_on(&files, &Device::Cpu, Some(Int8Kernel::Avx2)).unwrap();
        let f32 = load(tmp.path()).unwrap();
        let wide = head_dim == 64;
        assert_eq!(
            int8.kernels().contains(engine),
            wide,
            "heads of {head_dim}: {}",
            int8.kernels()
        );
        assert!(!f32.kernels().contains("QKᵀ in int8"), "{}", f32.kernels());
        for (i, (len, d)) in differences_alone_and_together(&int8)
            .into_iter()
            .enumerate()
        {
            assert_eq!(d, 0.0, "heads of {head_dim}: sequence {i} (len {len})");
        }
    }
}

/// `encode_rows` (the last layer's attention on the query blocks of the rows asked for, its
/// `Wo`, MLP and the final norm on those rows alone) gives `encode`'s states at those rows,
/// within 1e-5 (measured: equal bit for bit, each row's products summing in the same order),
/// and the heads read them alike: cls classification, the masked-LM logits at [MASK] rows. A
/// last layer of each kind (global, local), in f32 and int8 (on this CPU's int8 kernel); the
/// 150-token sequence's middle block of 64 queries has no row asked for. A row not computed,
/// mean pooling, rows out of order or past the batch, and no rows at all are errors naming
/// the problem.
#[test]
fn states_of_the_rows_asked_for_equal_every_row_states_at_those_rows() {
    use mbpipe_model::TokenStates;
    const TOL: f32 = 1e-5;
    let batch = PackedBatch::from_sequences(&[
        sequence(5, 1),
        sequence(23, 2),
        sequence(12, 3),
        sequence(150, 4),
    ]);
    let (first, tokens) = ([0u32, 5, 28, 40], batch.num_tokens() as u32);
    // Cls rows, two [MASK]-like rows, a row inside a long local band, the last token.
    let rows = vec![0, 3, 5, 17, 28, 30, 40, tokens - 1];
    for (layers, last) in [(3, "global"), (2, "local")] {
        for labels in [3, 0] {
            let tmp = tempfile::tempdir().unwrap();
            let synthetic = Synthetic {
                layers,
                ..tiny(labels)
            };
            write_model(tmp.path(), &synthetic.config(), &synthetic.weights());
            let files = ModelFiles::from_dir(tmp.path()).unwrap();
            let models = [
                ("f32", load(tmp.path()).unwrap()),
                ("int8", ModernBert::load_int8(&files, &Device::Cpu).unwrap()),
            ];
            for (dtype, model) in models {
                let what = format!("{dtype}, last layer {last}, labels {labels}");
                let every = model.encode(&batch).unwrap();
                let some = model.encode_rows(&batch, rows.clone()).unwrap();
                assert_eq!(some.kept(), &rows[..]);
                let d = max_abs_diff(&some.states().clone(), &every.rows(&rows).unwrap());
                eprintln!("{what}: max diff {d:e}");
                assert!(d <= TOL, "{what}: {d}");
                if labels > 0 {
                    let d = max_abs_diff(
                        &model.classify(&some, &batch).unwrap(),
                        &model.classify(&every, &batch).unwrap(),
                    );
                    assert!(d <= TOL, "{what}: classify {d}");
                } else {
                    let d = max_abs_diff(
                        &model.mask_logits(&some, &[3, 30]).unwrap(),
                        &model.mask_logits(&every, &[3, 30]).unwrap(),
                    );
                    assert!(d <= TOL, "{what}: mask logits {d}");
                }
                let cls = model.encode_rows(&batch, first.to_vec()).unwrap();
                let err = |e: mbpipe_model::ModelError| e.to_string();
                let e = err(cls.rows(&[0, 4]).unwrap_err());
                assert!(e.contains("token row 4 was not computed"), "{e}");
                let e = err(model.pool(&cls, &batch, Pooling::Mean).unwrap_err());
                assert!(e.contains("kept only the 4 rows"), "{e}");
                let e = err(model.encode_rows(&batch, vec![5, 0]).unwrap_err());
                assert!(
                    e.contains("token rows must increase; found 5 then 0"),
                    "{e}"
                );
                let e = err(model.encode_rows(&batch, vec![0, tokens]).unwrap_err());
                assert!(e.contains(&format!("token row {tokens} is outside")), "{e}");
                let e = err(model.encode_rows(&batch, vec![]).unwrap_err());
                assert!(e.contains("no token rows"), "{e}");
            }
        }
    }
}

#[test]
fn bare_encoder_without_prefix_matches_prefixed_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let with = random_weights(0);
    let bare: HashMap<String, Tensor> = with
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("model.").map(|k| (k.to_string(), v.clone())))
        .collect();
    write_model(&tmp.path().join("a"), &published_config(0), &with);
    write_model(&tmp.path().join("b"), &published_config(0), &bare);
    let batch = PackedBatch::from_sequences(&[sequence(30, 4)]);
    let a = load(&tmp.path().join("a")).unwrap().encode(&batch).unwrap();
    let bare_model = load(&tmp.path().join("b")).unwrap();
    assert!(!bare_model.has_mlm_head());
    assert_eq!(max_abs_diff(&a, &bare_model.encode(&batch).unwrap()), 0.0);
}

#[test]
fn v5_config_format_gives_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = random_weights(0);
    let published = published_config(0);
    let mut v5 = published.clone();
    let obj = v5.as_object_mut().unwrap();
    for k in [
        "global_attn_every_n_layers",
        "local_attention",
        "global_rope_theta",
        "local_rope_theta",
    ] {
        obj.remove(k);
    }
    obj.insert(
        "layer_types".into(),
        serde_json::json!(["full_attention", "sliding_attention", "full_attention"]),
    );
    obj.insert("sliding_window".into(), 4.into());
    obj.insert(
        "rope_parameters".into(),
        serde_json::json!({"full_attention": {"rope_type": "default", "rope_theta": 160000.0},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
    );
    write_model(&tmp.path().join("p"), &published, &weights);
    write_model(&tmp.path().join("v5"), &v5, &weights);
    let batch = PackedBatch::from_sequences(&[sequence(100, 1), sequence(7, 2)]);
    let a = load(&tmp.path().join("p")).unwrap().encode(&batch).unwrap();
    let b = load(&tmp.path().join("v5"))
        .unwrap()
        .encode(&batch)
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn load_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = published_config(0);

    let mut w = random_weights(0);
    w.remove("model.layers.1.mlp.Wo.weight");
    write_model(&tmp.path().join("missing"), &cfg, &w);
    let err = load(&tmp.path().join("missing")).err().unwrap().to_string();
    assert!(
        err.contains("`model.layers.1.mlp.Wo.weight` is missing"),
        "{err}"
    );

    let mut w = random_weights(0);
    w.insert(
        "model.layers.2.attn.Wo.weight".into(),
        Tensor::zeros((HIDDEN, HIDDEN + 1), DType::F32, &Device::Cpu).unwrap(),
    );
    write_model(&tmp.path().join("shape"), &cfg, &w);
    let err = load(&tmp.path().join("shape")).err().unwrap().to_string();
    assert!(
        err.contains("model.layers.2.attn.Wo.weight")
            && err.contains("[32, 33]")
            && err.contains("expected [32, 32]"),
        "{err}"
    );

    let dir = tmp.path().join("truncated");
    write_model(&dir, &cfg, &random_weights(0));
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&dir).err().unwrap().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );

    let dir = tmp.path().join("noconfig");
    write_model(&dir, &cfg, &random_weights(0));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = load(&dir).err().unwrap().to_string();
    assert!(
        err.contains("config.json") && err.contains("missing"),
        "{err}"
    );

    let dir = tmp.path().join("badconfig");
    write_model(&dir, &cfg, &random_weights(0));
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let err = load(&dir).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn sharded_checkpoint_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let w = random_weights(0);
    write_model(dir, &published_config(0), &w);
    let batch = PackedBatch::from_sequences(&[sequence(12, 9)]);
    let single = load(dir).unwrap().encode(&batch).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (a, b): (Vec<_>, Vec<_>) = w
        .into_iter()
        .partition(|(k, _)| k.contains("layers.0") || k.contains("embeddings"));
    let a: HashMap<_, _> = a.into_iter().collect();
    let b: HashMap<_, _> = b.into_iter().collect();
    candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = a
        .keys()
        .map(|k| (k.clone(), "model-00001-of-00002.safetensors".into()))
        .chain(
            b.keys()
                .map(|k| (k.clone(), "model-00002-of-00002.safetensors".into())),
        )
        .collect();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    let sharded = load(dir).unwrap().encode(&batch).unwrap();
    assert_eq!(max_abs_diff(&single, &sharded), 0.0);
}

#[test]
fn sequence_longer_than_positions_is_an_error() {
    let (_tmp, model) = tiny_model();
    let err = model
        .encode(&PackedBatch::from_sequences(&[vec![3u32; 513]]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("513") && err.contains("512"), "{err}");
}

/// Regression: verbalizer token ids were not checked against the vocabulary, and a mask row
/// past the batch was not checked either; on a GPU each is a device assert that poisons the
/// worker's CUDA context. Both are now errors naming the value and the limit.
#[test]
fn out_of_range_verbalizer_ids_and_mask_rows_are_clear_errors() {
    let (_tmp, model) = tiny_model();
    let batch = PackedBatch::from_sequences(&[sequence(5, 1), sequence(7, 2)]);
    let hidden = model.encode(&batch).unwrap();
    let rows = [Some(1), None];
    let ok = model.candidate_logits(&hidden, &rows, &[3, VOCAB as u32 - 1]);
    assert_eq!(ok.unwrap()[0].as_ref().map(Vec::len), Some(2));
    let err = model
        .candidate_logits(&hidden, &rows, &[3, VOCAB as u32])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "verbalizer token id {VOCAB} is outside the vocabulary"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("vocab_size = {VOCAB}")), "{err}");
    let err = model
        .mask_logits(&hidden, &[1, 12])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token row 12 is outside the batch's 12 tokens"),
        "{err}"
    );
}

/// The out-of-memory split's estimate, through a loaded model: on the CPU (per-sequence
/// attention) the same tokens in one long sequence estimate more than in short ones.
#[test]
fn memory_estimate_reflects_the_longest_sequence() {
    let (_tmp, model) = tiny_model();
    let short = PackedBatch::from_sequences(&vec![sequence(16, 1); 32]);
    let long = PackedBatch::from_sequences(&[sequence(512, 1)]);
    assert_eq!(short.num_tokens(), long.num_tokens());
    let (s, l) = (model.memory_estimate(&short), model.memory_estimate(&long));
    assert!(l > s, "long {l} vs short {s}");
    assert_eq!(model.attention_kernel(), mbpipe_model::AttentionKernel::Cpu);
}
