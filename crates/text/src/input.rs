//! A row's text as model input: as is, with a prefix (optionally in overlapping chunks), or
//! inside a zero-shot prompt that is cut from the text's end, never the template's, to fit.

use crate::template::{Piece, Template};
use crate::{TextEncoder, TextError};

/// How a row's text is turned into model input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputVariant {
    /// The text as is.
    Plain,
    /// A zero-shot prompt around the text.
    Template(Template),
    /// Prefix + text, optionally split into overlapping chunks.
    Prefixed {
        /// Prepended text.
        prefix: String,
        /// `Some(overlap)`: chunk instead of truncate.
        chunk_overlap: Option<usize>,
    },
}

/// Model input of one row: one sequence, or several chunks.
#[derive(Debug, Clone)]
pub struct RowInput {
    /// Token sequences (chunks of one text, or one).
    pub sequences: Vec<Vec<u32>>,
    /// Whether the text was cut.
    pub truncated: bool,
}

impl InputVariant {
    /// Tokenizes one row's text for this variant.
    pub fn encode(&self, encoder: &TextEncoder, text: &str) -> Result<RowInput, TextError> {
        match self {
            InputVariant::Plain => {
                let e = encoder.encode(text)?;
                Ok(RowInput {
                    sequences: vec![e.ids],
                    truncated: e.truncated,
                })
            }
            InputVariant::Prefixed {
                prefix,
                chunk_overlap: None,
            } => {
                let e = encoder.encode(&format!("{prefix}{text}"))?;
                Ok(RowInput {
                    sequences: vec![e.ids],
                    truncated: e.truncated,
                })
            }
            InputVariant::Prefixed {
                prefix,
                chunk_overlap: Some(overlap),
            } => Ok(RowInput {
                sequences: encoder.encode_chunks(&format!("{prefix}{text}"), *overlap)?,
                truncated: false,
            }),
            InputVariant::Template(template) => encode_prompt(encoder, template, text),
        }
    }
}

/// Renders a zero-shot prompt; when it is too long, cuts the text from its end (never the
/// template, whose [MASK] must survive) so the prompt fills `max_length` exactly.
fn encode_prompt(
    encoder: &TextEncoder,
    template: &Template,
    text: &str,
) -> Result<RowInput, TextError> {
    let parts: Vec<(&str, bool)> = template
        .pieces
        .iter()
        .map(|p| match p {
            Piece::Literal(l) => (l.as_str(), false),
            Piece::Field(_) => (text, true),
        })
        .collect();
    let e = encoder.encode_parts(&parts)?;
    Ok(RowInput {
        sequences: vec![e.ids],
        truncated: e.truncated,
    })
}
