//! A row's text to packed batches: `{column}` templates, zero-shot prompts and prefixes
//! ([`InputVariant`]), tokenization with bounded input, truncation flags and chunks, and
//! length-sorted packing under a token budget (no padding anywhere).
//!
//! ```no_run
//! use mbpipe_text::{pack_by_length, TextEncoder};
//! # fn tok() -> mbpipe_model::Tokenizer { unimplemented!() }
//! let encoder = TextEncoder::new(tok(), 512)?;
//! let encoded: Vec<_> = ["a short text", "another one"].iter().map(|t| encoder.encode(t)).collect::<Result<_, _>>()?;
//! let batches = pack_by_length(encoded.iter().enumerate().map(|(i, e)| (i, e.ids.as_slice())), 8192);
//! # Ok::<(), mbpipe_text::TextError>(())
//! ```
#![deny(missing_docs)]

mod encode;
mod input;
mod pack;
pub mod template;

pub use encode::{Encoded, TextEncoder, TextError};
pub use input::{InputVariant, RowInput};
pub use pack::{pack_by_length, Packed};
