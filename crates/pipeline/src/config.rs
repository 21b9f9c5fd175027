//! The pipeline file as written: TOML parsed into structs that reject unknown keys.
//!
//! Rules that span fields (which keys a task kind accepts, label words, templates) are checked
//! once, in [`crate::validate`].

use std::path::Path;

use serde::Deserialize;

use crate::error::PipelineError;

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// What to read.
    pub input: InputSection,
    /// Where to write.
    pub output: OutputSection,
    /// What to compute, one entry per task.
    pub tasks: Vec<TaskSection>,
}

/// `[input]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    /// A file, a directory or a glob of Parquet / JSON-lines files.
    pub path: String,
    /// A column name, or a template over columns such as `"{title}\n\n{body}"`.
    #[serde(default = "default_text")]
    pub text: String,
    /// Optional SQL over the table `input` that filters rows and computes columns.
    pub query: Option<String>,
    /// Input columns written to the output (default: all).
    pub keep: Option<Vec<String>>,
    /// What to do with a bad row: `fail` (default) or `skip` (to `_rejects.jsonl`).
    #[serde(default)]
    pub on_error: OnErrorSetting,
}

fn default_text() -> String {
    "text".into()
}

/// `[input] on_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnErrorSetting {
    /// Stop at the first bad row.
    #[default]
    Fail,
    /// Write bad rows to `_rejects.jsonl` and go on.
    Skip,
}

/// `[output]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Output directory of part files.
    pub path: String,
    /// `parquet` (default, zstd) or `arrow` (Arrow IPC files).
    #[serde(default)]
    pub format: OutputFormatSetting,
    /// Rows per part file (default 100,000). Smaller parts commit more often, so a crash or an
    /// interrupt loses less work.
    pub part_rows: Option<u64>,
}

/// `[output] format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormatSetting {
    /// Parquet with zstd.
    #[default]
    Parquet,
    /// Arrow IPC files.
    Arrow,
}

/// The kinds of task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKindSetting {
    /// A fine-tuned sequence classifier.
    Classify,
    /// A masked LM with a prompt and a verbalizer word per label.
    ZeroShot,
    /// Pooled embeddings.
    Embed,
    /// Masked-token predictions.
    FillMask,
}

impl TaskKindSetting {
    /// The name used in the pipeline file.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKindSetting::Classify => "classify",
            TaskKindSetting::ZeroShot => "zero_shot",
            TaskKindSetting::Embed => "embed",
            TaskKindSetting::FillMask => "fill_mask",
        }
    }
}

/// `embed` texts longer than the model's window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongText {
    /// Cut to `max_length` and flag `NAME_truncated`.
    #[default]
    Truncate,
    /// Split into overlapping windows and average their embeddings.
    Chunk,
}

/// A task's `quantize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizeSetting {
    /// The encoder's linear layers in int8 (as `--dtype int8`).
    Int8,
}

/// One `[[tasks]]` entry; which keys apply depends on `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// Prefix of the task's output columns.
    pub name: String,
    /// What the task computes.
    pub kind: TaskKindSetting,
    /// Local directory or Hub id (`org/name` or `org/name@revision`).
    pub model: String,
    /// Hub revision (branch, tag or commit).
    pub revision: Option<String>,
    /// Longest input in tokens (default: the model's `max_position_embeddings`).
    pub max_length: Option<usize>,
    /// `"int8"`: this task's model runs quantized on the CPU whatever `--dtype` says.
    pub quantize: Option<QuantizeSetting>,
    /// classify (multi-label): score at or above which a label is listed in `NAME_labels`.
    pub threshold: Option<f32>,
    /// classify / zero_shot: label -> weight; writes `NAME_polarity`.
    pub weights: Option<toml::Table>,
    /// zero_shot: prompt with `{text}` and one `[MASK]`.
    pub template: Option<String>,
    /// zero_shot: label -> verbalizer word, in output order.
    pub labels: Option<toml::Table>,
    /// embed: `mean` or `cls`.
    pub pooling: Option<String>,
    /// embed: L2-normalise.
    pub normalize: Option<bool>,
    /// embed: keep the first D values (Matryoshka models).
    pub dimensions: Option<usize>,
    /// embed: `truncate` or `chunk`.
    pub long_text: Option<LongText>,
    /// embed: overlap between chunks in tokens (default 32).
    pub chunk_overlap: Option<usize>,
    /// embed: text prepended to every input.
    pub prefix: Option<String>,
    /// fill_mask: predictions per [MASK].
    pub top_k: Option<usize>,
}

impl PipelineFile {
    /// Reads and parses a pipeline file; errors carry the TOML line and column.
    pub fn read(path: &Path) -> Result<(Self, String), PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PipelineError::Invalid(format!("cannot read pipeline file {}: {e}", path.display()))
        })?;
        let parsed = Self::parse(&text)
            .map_err(|e| PipelineError::Invalid(format!("{}: {e}", path.display())))?;
        Ok((parsed, text))
    }

    /// Parses the text of a pipeline file.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[input]
path = "in.jsonl"
[output]
path = "out"
[[tasks]]
name = "t"
kind = "classify"
model = "m"
"#;

    #[test]
    fn minimal_file_parses_with_defaults() {
        let p = PipelineFile::parse(MINIMAL).unwrap();
        assert_eq!(p.input.text, "text");
        assert_eq!(p.input.on_error, OnErrorSetting::Fail);
        assert_eq!(p.output.format, OutputFormatSetting::Parquet);
        assert_eq!(p.tasks[0].kind, TaskKindSetting::Classify);
    }

    #[test]
    fn unknown_key_is_reported_with_its_line() {
        let text = MINIMAL.replace("model = \"m\"", "model = \"m\"\nmodle = \"x\"");
        let err = PipelineFile::parse(&text).unwrap_err();
        assert!(err.contains("line 10") && err.contains("modle"), "{err}");
    }

    #[test]
    fn wrong_type_is_reported_with_its_line() {
        let text = MINIMAL.replace(
            "kind = \"classify\"",
            "kind = \"classify\"\ntop_k = \"five\"",
        );
        let err = PipelineFile::parse(&text).unwrap_err();
        assert!(err.contains("line 9") && err.contains("top_k"), "{err}");
    }

    #[test]
    fn quantize_accepts_int8_and_names_the_line_of_anything_else() {
        let p = PipelineFile::parse(&format!("{MINIMAL}quantize = \"int8\"\n")).unwrap();
        assert_eq!(p.tasks[0].quantize, Some(QuantizeSetting::Int8));
        assert_eq!(
            PipelineFile::parse(MINIMAL).unwrap().tasks[0].quantize,
            None
        );
        let err = PipelineFile::parse(&format!("{MINIMAL}quantize = \"int4\"\n")).unwrap_err();
        assert!(
            err.contains("line 10") && err.contains("int4") && err.contains("int8"),
            "{err}"
        );
    }

    #[test]
    fn labels_keep_their_written_order() {
        let text = format!("{MINIMAL}labels = {{ z = \"bad\", a = \"okay\", m = \"great\" }}\n");
        let p = PipelineFile::parse(&text).unwrap();
        let keys: Vec<&String> = p.tasks[0].labels.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a", "m"]);
    }
}
