//! Property tests (fuzzing) of the pipeline-file parser and checker: whatever the text, parsing
//! and validation return a value or an error message, never a panic. Cases proptest finds are
//! kept in `proptest-regressions/` and replayed first.

use mbpipe_pipeline::config::PipelineFile;
use mbpipe_pipeline::template::Template;
use mbpipe_pipeline::validate::Pipeline;
use proptest::prelude::*;

const VALID: &str = r#"[input]
path = "in/*.jsonl"
text = "{title}\n\n{body}"
query = "SELECT * FROM input WHERE lang = 'en'"
on_error = "skip"

[output]
path = "out"
format = "arrow"
part_rows = 100

[[tasks]]
name = "sentiment"
kind = "zero_shot"
model = "org/model@main"
template = "{text} It was [MASK]."
labels = { negative = "bad", positive = "great" }
weights = { negative = -1.0, positive = 1.0 }

[[tasks]]
name = "emb"
kind = "embed"
model = "org/embedder"
pooling = "mean"
dimensions = 64
long_text = "chunk"
"#;

/// Checks a text the way `mbpipe validate` does before touching models or inputs.
fn check(text: &str) {
    if let Ok(file) = PipelineFile::parse(text) {
        let _ = Pipeline::from_file(file, text.to_string());
    }
}

/// The valid file with one edit: a span replaced by random text.
fn mutation() -> impl Strategy<Value = String> {
    (
        0..VALID.len(),
        0usize..12,
        "[\\[\\]{}=\"'#a-z0-9_.\\-\n \\\\]{0,12}",
    )
        .prop_map(|(at, len, with)| {
            let at = (0..=at)
                .rev()
                .find(|&i| VALID.is_char_boundary(i))
                .unwrap_or(0);
            let end = (at + len).min(VALID.len());
            let end = (end..=VALID.len())
                .find(|&i| VALID.is_char_boundary(i))
                .unwrap_or(VALID.len());
            format!("{}{}{}", &VALID[..at], with, &VALID[end..])
        })
}

/// Values of plausible keys, right or wrong.
fn task_line() -> impl Strategy<Value = String> {
    let keys = prop_oneof![
        Just("name"),
        Just("kind"),
        Just("model"),
        Just("template"),
        Just("labels"),
        Just("weights"),
        Just("pooling"),
        Just("normalize"),
        Just("dimensions"),
        Just("long_text"),
        Just("chunk_overlap"),
        Just("top_k"),
        Just("max_length"),
        Just("threshold"),
        Just("revision"),
        Just("prefix"),
    ];
    let values = prop_oneof![
        "\"[a-z_\\[\\]{} .@/]{0,16}\"".prop_map(|s| s),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        Just("true".to_string()),
        Just("{ a = \"x\", b = \"y\" }".to_string()),
        Just("{ a = 1.0, b = -1.0 }".to_string()),
        Just("[]".to_string()),
    ];
    (keys, values).prop_map(|(k, v)| format!("{k} = {v}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check(&text);
    }

    #[test]
    fn mutated_valid_files_never_panic(text in mutation()) {
        check(&text);
    }

    #[test]
    fn random_task_keys_never_panic(lines in proptest::collection::vec(task_line(), 0..8)) {
        let text = format!(
            "[input]\npath = \"x.jsonl\"\ntext = \"text\"\n[output]\npath = \"o\"\n[[tasks]]\n{}\n",
            lines.join("\n")
        );
        check(&text);
    }

    #[test]
    fn templates_never_panic(t in "[{}a-z \\[\\]\\\\]{0,30}") {
        if let Ok(template) = Template::parse(&t) {
            let _ = template.fields();
        }
    }
}

#[test]
fn the_unmutated_file_is_valid() {
    let file = PipelineFile::parse(VALID).unwrap();
    Pipeline::from_file(file, VALID.to_string()).unwrap();
}
