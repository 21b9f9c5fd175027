//! From the file as written to a pipeline that can run: every rule that spans fields, checked once.

use std::path::{Path, PathBuf};

use mbpipe_model::{ModelRef, Pooling, Precision};

use crate::config::{
    LongText, OnErrorSetting, OutputFormatSetting, PipelineFile, QuantizeSetting, TaskKindSetting,
    TaskSection,
};
use crate::error::PipelineError;
use mbpipe_text::template::Template;

/// A checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The pipeline file's text (recorded in the manifest, compared on resume).
    pub source: String,
    /// Input settings.
    pub input: InputSpec,
    /// Output directory.
    pub output_dir: PathBuf,
    /// Output format.
    pub output_format: OutputFormatSetting,
    /// Rows per part file.
    pub part_rows: u64,
    /// Tasks in file order.
    pub tasks: Vec<TaskSpec>,
}

/// `[input]`, checked.
#[derive(Debug, Clone)]
pub struct InputSpec {
    /// Path, directory or glob, as written (relative to the working directory).
    pub path: String,
    /// How a row's text is built from its columns.
    pub text: Template,
    /// Optional SQL filter / projection.
    pub query: Option<String>,
    /// Columns to pass through (None: all).
    pub keep: Option<Vec<String>>,
    /// Bad-row policy.
    pub on_error: OnErrorSetting,
}

/// One task, checked.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Column prefix.
    pub name: String,
    /// The model.
    pub model: ModelRef,
    /// Explicit `max_length`.
    pub max_length: Option<usize>,
    /// `quantize`: the precision the task's model runs in instead of `--dtype`'s.
    pub quantize: Option<Precision>,
    /// What to compute.
    pub kind: TaskKind,
}

/// What a task computes, with its kind's settings.
#[derive(Debug, Clone)]
pub enum TaskKind {
    /// Sequence classification.
    Classify {
        /// Multi-label threshold.
        threshold: f32,
        /// Label weights for `NAME_polarity`.
        weights: Option<Vec<(String, f64)>>,
    },
    /// Zero-shot classification through a masked LM.
    ZeroShot {
        /// Prompt template with `{text}` and one `[MASK]`.
        template: Template,
        /// Label and verbalizer word, in output order.
        labels: Vec<(String, String)>,
        /// Label weights for `NAME_polarity`.
        weights: Option<Vec<(String, f64)>>,
    },
    /// Embeddings.
    Embed {
        /// Pooling (None: the model's own, else mean).
        pooling: Option<Pooling>,
        /// L2 normalisation (None: the model's own, else false).
        normalize: Option<bool>,
        /// Matryoshka truncation.
        dimensions: Option<usize>,
        /// Over-long texts.
        long_text: LongText,
        /// Overlap of chunks in tokens.
        chunk_overlap: usize,
        /// Prefix (None: the model's sentence-transformers prompt).
        prefix: Option<String>,
    },
    /// Fill-mask.
    FillMask {
        /// Predictions per mask.
        top_k: usize,
    },
}

/// Keys each kind accepts besides name, kind, model, revision, max_length, quantize.
fn allowed_keys(kind: TaskKindSetting) -> &'static [&'static str] {
    match kind {
        TaskKindSetting::Classify => &["threshold", "weights"],
        TaskKindSetting::ZeroShot => &["template", "labels", "weights"],
        TaskKindSetting::Embed => &[
            "pooling",
            "normalize",
            "dimensions",
            "long_text",
            "chunk_overlap",
            "prefix",
        ],
        TaskKindSetting::FillMask => &["top_k"],
    }
}

fn present_keys(t: &TaskSection) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut add = |set: bool, k: &'static str| {
        if set {
            keys.push(k)
        }
    };
    add(t.threshold.is_some(), "threshold");
    add(t.weights.is_some(), "weights");
    add(t.template.is_some(), "template");
    add(t.labels.is_some(), "labels");
    add(t.pooling.is_some(), "pooling");
    add(t.normalize.is_some(), "normalize");
    add(t.dimensions.is_some(), "dimensions");
    add(t.long_text.is_some(), "long_text");
    add(t.chunk_overlap.is_some(), "chunk_overlap");
    add(t.prefix.is_some(), "prefix");
    add(t.top_k.is_some(), "top_k");
    keys
}

impl Pipeline {
    /// Reads and checks a pipeline file (without loading models or reading input).
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let (file, source) = PipelineFile::read(path)?;
        Self::from_file(file, source)
            .map_err(|e| PipelineError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Checks a parsed file.
    pub fn from_file(file: PipelineFile, source: String) -> Result<Self, String> {
        let text = Template::parse(&file.input.text).map_err(|e| format!("[input] text: {e}"))?;
        // A bare name is a column; only braces make it a template.
        let text = if text.fields().is_empty() {
            Template::parse(&format!(
                "{{{}}}",
                file.input.text.replace('{', "{{").replace('}', "}}")
            ))
            .map_err(|e| format!("[input] text: {e}"))?
        } else {
            text
        };
        if let Some(q) = &file.input.query {
            if q.trim().is_empty() {
                return Err("[input] query is empty".into());
            }
        }
        if file.output.path.trim().is_empty() {
            return Err("[output] path is empty".into());
        }
        if file.output.part_rows == Some(0) {
            return Err("[output] part_rows must be at least 1".into());
        }
        if file.tasks.is_empty() {
            return Err("the pipeline has no [[tasks]]".into());
        }
        let mut tasks = Vec::new();
        for t in &file.tasks {
            let spec = check_task(t)
                .map_err(|e| format!("task `{}` ({}): {e}", t.name, t.kind.as_str()))?;
            if tasks.iter().any(|o: &TaskSpec| o.name == spec.name) {
                return Err(format!(
                    "two tasks are named `{}`; names prefix output columns and must be unique",
                    spec.name
                ));
            }
            tasks.push(spec);
        }
        Ok(Pipeline {
            source,
            input: InputSpec {
                path: without_file_scheme(&file.input.path),
                text,
                query: file.input.query,
                keep: file.input.keep,
                on_error: file.input.on_error,
            },
            output_dir: PathBuf::from(without_file_scheme(&file.output.path)),
            output_format: file.output.format,
            part_rows: file.output.part_rows.unwrap_or(crate::output::PART_ROWS),
            tasks,
        })
    }
}

fn check_task(t: &TaskSection) -> Result<TaskSpec, String> {
    let name_ok = !t.name.is_empty()
        && t.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !t.name.starts_with(|c: char| c.is_ascii_digit());
    if !name_ok {
        return Err("name must be letters, digits and `_`, not starting with a digit (it prefixes column names)".into());
    }
    let allowed = allowed_keys(t.kind);
    if let Some(bad) = present_keys(t).into_iter().find(|k| !allowed.contains(k)) {
        return Err(format!(
            "key `{bad}` does not apply to this kind (it accepts: {})",
            allowed.join(", ")
        ));
    }
    let model = ModelRef::parse(&t.model, t.revision.as_deref()).map_err(|e| e.to_string())?;
    if t.max_length == Some(0) {
        return Err("max_length must be at least 1".into());
    }
    let weights = t.weights.as_ref().map(parse_weights).transpose()?;
    let kind = match t.kind {
        TaskKindSetting::Classify => {
            let threshold = t.threshold.unwrap_or(0.5);
            if !(0.0..=1.0).contains(&threshold) {
                return Err(format!(
                    "threshold must be between 0 and 1, found {threshold}"
                ));
            }
            TaskKind::Classify { threshold, weights }
        }
        TaskKindSetting::ZeroShot => {
            let raw = t.template.as_deref().ok_or(
                "zero_shot needs `template` (e.g. \"{text} Overall, it was a [MASK] experience.\")",
            )?;
            let template = Template::parse(raw).map_err(|e| format!("template: {e}"))?;
            if template.fields() != ["text"] {
                return Err(format!(
                    "template must use `{{text}}` and no other placeholder, found {:?}",
                    template.fields()
                ));
            }
            let masks = raw.matches("[MASK]").count();
            if masks != 1 {
                return Err(format!(
                    "template must contain exactly one [MASK], found {masks}"
                ));
            }
            let table = t
                .labels
                .as_ref()
                .ok_or("zero_shot needs `labels` (label = \"verbalizer word\")")?;
            let mut labels = Vec::new();
            for (label, word) in table {
                let word = word.as_str().ok_or(format!(
                    "labels.{label} must be a string (the verbalizer word)"
                ))?;
                if word.trim().is_empty() {
                    return Err(format!("labels.{label} is empty"));
                }
                labels.push((label.clone(), word.to_string()));
            }
            if labels.len() < 2 {
                return Err("zero_shot needs at least two labels".into());
            }
            if let Some(w) = &weights {
                check_weight_labels(w, &labels.iter().map(|l| l.0.clone()).collect::<Vec<_>>())?;
            }
            TaskKind::ZeroShot {
                template,
                labels,
                weights,
            }
        }
        TaskKindSetting::Embed => {
            let pooling = t
                .pooling
                .as_deref()
                .map(str::parse::<Pooling>)
                .transpose()?;
            if t.dimensions == Some(0) {
                return Err("dimensions must be at least 1".into());
            }
            TaskKind::Embed {
                pooling,
                normalize: t.normalize,
                dimensions: t.dimensions,
                long_text: t.long_text.unwrap_or_default(),
                chunk_overlap: t.chunk_overlap.unwrap_or(32),
                prefix: t.prefix.clone(),
            }
        }
        TaskKindSetting::FillMask => {
            let top_k = t.top_k.unwrap_or(5);
            if top_k == 0 {
                return Err("top_k must be at least 1".into());
            }
            TaskKind::FillMask { top_k }
        }
    };
    Ok(TaskSpec {
        name: t.name.clone(),
        model,
        max_length: t.max_length,
        quantize: t.quantize.map(|q| match q {
            QuantizeSetting::Int8 => Precision::Int8,
        }),
        kind,
    })
}

fn parse_weights(table: &toml::Table) -> Result<Vec<(String, f64)>, String> {
    table
        .iter()
        .map(|(label, v)| {
            let w = v
                .as_float()
                .or_else(|| v.as_integer().map(|i| i as f64))
                .ok_or(format!(
                    "weights.{label} must be a number, found {}",
                    v.type_str()
                ))?;
            Ok((label.clone(), w))
        })
        .collect()
}

/// Every weighted label must be one of the task's labels.
pub(crate) fn check_weight_labels(
    weights: &[(String, f64)],
    labels: &[String],
) -> Result<(), String> {
    for (label, _) in weights {
        if !labels.contains(label) {
            return Err(format!(
                "weights name label `{label}`, which is not one of the labels {labels:?}"
            ));
        }
    }
    Ok(())
}

/// `file:///data/x` is the local path `/data/x`; anything else is kept as written.
fn without_file_scheme(path: &str) -> String {
    mbpipe_store::file_url_path(path)
        .unwrap_or(path)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(task: &str) -> Result<Pipeline, String> {
        let text = format!("[input]\npath = \"x.jsonl\"\n[output]\npath = \"out\"\n[[tasks]]\nname = \"t\"\nmodel = \"org/m\"\n{task}\n");
        Pipeline::from_file(PipelineFile::parse(&text)?, text)
    }

    #[test]
    fn file_urls_are_local_paths_and_bucket_urls_are_kept() {
        let paths = |input: &str, output: &str| {
            let text = format!(
                "[input]\npath = \"{input}\"\n[output]\npath = \"{output}\"\n[[tasks]]\nname = \"t\"\nkind = \"embed\"\nmodel = \"org/m\"\n"
            );
            let p = Pipeline::from_file(PipelineFile::parse(&text).unwrap(), text).unwrap();
            (p.input.path, p.output_dir)
        };
        assert_eq!(
            paths("file:///data/in/*.jsonl", "file:///data/out"),
            ("/data/in/*.jsonl".to_string(), PathBuf::from("/data/out"))
        );
        assert_eq!(
            paths("s3://corpus/in/", "gs://results/out"),
            (
                "s3://corpus/in/".to_string(),
                PathBuf::from("gs://results/out")
            )
        );
    }

    #[test]
    fn keys_of_another_kind_are_rejected() {
        let err = check("kind = \"embed\"\ntop_k = 3").unwrap_err();
        assert!(err.contains("`top_k` does not apply"), "{err}");
    }

    #[test]
    fn zero_shot_needs_one_mask_and_text() {
        let err = check("kind = \"zero_shot\"\ntemplate = \"{text} no mask\"\nlabels = { a = \"x\", b = \"y\" }").unwrap_err();
        assert!(err.contains("exactly one [MASK]"), "{err}");
        let err = check(
            "kind = \"zero_shot\"\ntemplate = \"{body} [MASK]\"\nlabels = { a = \"x\", b = \"y\" }",
        )
        .unwrap_err();
        assert!(err.contains("{text}"), "{err}");
        let err = check("kind = \"zero_shot\"\ntemplate = \"{text} [MASK]\"\nlabels = { a = \"x\", b = \"y\" }\nweights = { c = 1 }").unwrap_err();
        assert!(err.contains("`c`"), "{err}");
        assert!(check("kind = \"zero_shot\"\ntemplate = \"{text} [MASK]\"\nlabels = { a = \"x\", b = \"y\" }\nweights = { a = -1, b = 1.0 }").is_ok());
    }

    #[test]
    fn bare_text_setting_is_a_column() {
        let p = check("kind = \"fill_mask\"").unwrap();
        assert_eq!(p.input.text.single_field(), Some("text"));
    }
}
