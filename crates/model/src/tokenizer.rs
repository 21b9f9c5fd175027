//! Loading a model's `tokenizer.json` as the engine needs it.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};

/// Loads `tokenizer.json` with padding and truncation off: packing and length limits are ours.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let mut tok = Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    tok.with_padding(None);
    tok.with_truncation(None)
        .map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(tok)
}
