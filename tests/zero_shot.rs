//! Zero-shot prompts longer than `max_length`: the text is cut, the template kept, and the
//! scores are the masked LM's on exactly those ids.
//! Tolerance: 1e-5 absolute on probabilities: the run and the reference are the same f32 engine
//! on the same ids (the engine itself matches transformers to 1e-4 in crates/model/tests/parity.rs).

use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::Float32Type;
use mbpipe_model::{load_tokenizer, DType, Device, ModelFiles, ModernBert, PackedBatch};
use mbpipe_pipeline::tasks::InputVariant;
use mbpipe_pipeline::template::Template;
use mbpipe_text::TextEncoder;

use crate::pipeline::read_output;
use crate::util::{assert_close, fixture, mbpipe, ok, softmax};

const TOL: f32 = 1e-5;
const TEMPLATE: &str = "{text} Overall, it was a [MASK] experience.";
const TAIL: &str = " Overall, it was a [MASK] experience.";
const CLS: u32 = 50281;
const SEP: u32 = 50282;
const MASK: u32 = 50284;
const LIMITS: [usize; 3] = [16, 32, 64];

#[test]
fn zero_shot_prompt_too_long_cuts_the_text_keeps_the_template_and_fills_max_length() {
    let Some(fx) = fixture() else { return };
    // Fixture text 12: 107 tokens with [CLS] and [SEP].
    let text = &fx.texts[12];
    let files = ModelFiles::from_dir(Path::new(&fx.model("mlm"))).unwrap();
    let tok = load_tokenizer(&files.tokenizer).unwrap();
    let text_ids = tok
        .encode_fast(text.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(text_ids.len(), 105);
    let tail = tok.encode_fast(TAIL, false).unwrap().get_ids().to_vec();
    let template = InputVariant::Template(Template::parse(TEMPLATE).unwrap());

    // The expected ids: [CLS], the text's first tokens, the whole template tail, [SEP].
    let mut wanted = Vec::new();
    for max_length in LIMITS {
        let mut want = vec![CLS];
        want.extend(&text_ids[..max_length - 2 - tail.len()]);
        want.extend(&tail);
        want.push(SEP);
        assert_eq!(want.len(), max_length);
        let encoder = TextEncoder::new(tok.clone(), max_length).unwrap();
        let got = template.encode(&encoder, text).unwrap();
        assert!(got.truncated, "max_length {max_length}");
        assert_eq!(got.sequences, [want.clone()], "max_length {max_length}");
        wanted.push(want);
    }

    // One run, one task per limit; the manifest counts every token the model saw.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("in.jsonl"),
        serde_json::json!({ "text": text }).to_string() + "\n",
    )
    .unwrap();
    let mut toml = "[input]\npath = \"in.jsonl\"\n[output]\npath = \"zs\"\n".to_string();
    for max_length in LIMITS {
        toml.push_str(&format!(
            "[[tasks]]\nname = \"z{max_length}\"\nkind = \"zero_shot\"\nmodel = \"{}\"\nmax_length = {max_length}\ntemplate = \"{TEMPLATE}\"\nlabels = {{ negative = \"bad\", neutral = \"okay\", positive = \"great\" }}\n",
            fx.model("mlm")
        ));
    }
    std::fs::write(tmp.path().join("zs.toml"), toml).unwrap();
    ok(mbpipe(tmp.path(), &["run", "zs.toml"]));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("zs/_manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["tokens"], LIMITS.iter().sum::<usize>());

    // The reference: the engine's masked-LM logits on exactly those ids.
    let model = ModernBert::load(&files, &Device::Cpu, DType::F32).unwrap();
    let words: Vec<usize> = [" bad", " okay", " great"]
        .iter()
        .map(|w| tok.encode_fast(*w, false).unwrap().get_ids()[0] as usize)
        .collect();
    let b = read_output(&tmp.path().join("zs"));
    let mut all_scores = Vec::new();
    for (max_length, ids) in LIMITS.iter().zip(&wanted) {
        let hidden = model.encode(&PackedBatch::from_sequences(&[ids])).unwrap();
        let at = ids.iter().position(|&id| id == MASK).unwrap() as u32;
        let logits: Vec<f32> = model
            .mask_logits(&hidden, &[at])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .remove(0);
        let want = softmax(&words.iter().map(|&w| logits[w]).collect::<Vec<_>>());
        let scores = b
            .column_by_name(&format!("z{max_length}_scores"))
            .unwrap()
            .as_struct();
        let got: Vec<f32> = (0..3)
            .map(|k| scores.column(k).as_primitive::<Float32Type>().value(0))
            .collect();
        assert_close(&got, &want, TOL, &format!("max_length {max_length}"));
        let truncated = b
            .column_by_name(&format!("z{max_length}_truncated"))
            .unwrap()
            .as_boolean();
        assert!(truncated.value(0));
        all_scores.push(got);
    }
    // Three limits, three different inputs: the scores differ.
    assert!(all_scores[0] != all_scores[1] && all_scores[1] != all_scores[2]);
}
