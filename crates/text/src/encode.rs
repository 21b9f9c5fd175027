//! Tokenizing one text: cut by bytes first, then truncate to the model's length, and say so.

use mbpipe_model::Tokenizer;
use rayon::prelude::*;
use tokenizers::{PostProcessor, TruncationDirection};

/// Tokenization failures.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The tokenizer itself failed on a text.
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    /// A setting that cannot work with this tokenizer.
    #[error("{0}")]
    Config(String),
}

/// Token ids of one text, special tokens included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `[CLS] ... [SEP]` ids.
    pub ids: Vec<u32>,
    /// Whether the text was cut to fit `max_length` (by bytes or by tokens).
    pub truncated: bool,
}

/// Upper bound of bytes per token used to cut huge texts before tokenizing: generous enough that
/// a cut text still yields at least `max_length` tokens in practice.
const BYTES_PER_TOKEN_BOUND: usize = 64;

/// Tokenizes texts for one model with one length limit.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_length: usize,
    special_tokens: usize,
    max_bytes: usize,
}

impl TextEncoder {
    /// `max_length` counts special tokens, as transformers' truncation does.
    pub fn new(tokenizer: Tokenizer, max_length: usize) -> Result<Self, TextError> {
        let special_tokens = tokenizer
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0);
        if max_length <= special_tokens {
            return Err(TextError::Config(format!(
                "max_length {max_length} leaves no room for text (the template adds {special_tokens} special tokens)"
            )));
        }
        Ok(TextEncoder {
            tokenizer,
            max_length,
            special_tokens,
            max_bytes: max_length.saturating_mul(BYTES_PER_TOKEN_BOUND),
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The length limit, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Tokenizes one text, truncating it to `max_length` tokens.
    pub fn encode(&self, text: &str) -> Result<Encoded, TextError> {
        let (text, cut) = cut_at_char_boundary(text, self.max_bytes);
        let mut enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let room = self.max_length - self.special_tokens;
        let truncated = cut || enc.len() > room;
        if enc.len() > room {
            enc.truncate(room, 0, TruncationDirection::Right);
        }
        let enc = self
            .tokenizer
            .post_process(enc, None, true)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            truncated,
        })
    }

    /// Tokenizes many texts in parallel; `None` texts stay `None`.
    pub fn encode_many(&self, texts: &[Option<&str>]) -> Vec<Result<Option<Encoded>, TextError>> {
        texts
            .par_iter()
            .map(|t| t.map(|t| self.encode(t)).transpose())
            .collect()
    }

    /// Splits a long text into overlapping windows of at most `max_length` tokens each (special
    /// tokens included); a text that fits gives one window. `overlap` counts content tokens.
    pub fn encode_chunks(&self, text: &str, overlap: usize) -> Result<Vec<Vec<u32>>, TextError> {
        let (text, _) = cut_at_char_boundary(text, self.max_bytes.saturating_mul(64));
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let room = self.max_length - self.special_tokens;
        let overlap = overlap.min(room / 2);
        let ids = enc.get_ids();
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + room).min(ids.len());
            let piece = tokenizers::Encoding::from_tokens(
                ids[start..end]
                    .iter()
                    .map(|&id| tokenizers::Token::new(id, String::new(), (0, 0)))
                    .collect(),
                0,
            );
            let with_specials = self
                .tokenizer
                .post_process(piece, None, true)
                .map_err(|e| TextError::Tokenizer(e.to_string()))?;
            windows.push(with_specials.get_ids().to_vec());
            if end >= ids.len() {
                break;
            }
            start = end - overlap;
        }
        Ok(windows)
    }
}

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a char boundary.
fn cut_at_char_boundary(text: &str, max_bytes: usize) -> (&str, bool) {
    if text.len() <= max_bytes {
        return (text, false);
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_char_boundaries() {
        assert_eq!(cut_at_char_boundary("héllo", 2), ("h", true));
        assert_eq!(cut_at_char_boundary("héllo", 3), ("hé", true));
        assert_eq!(cut_at_char_boundary("abc", 3), ("abc", false));
    }
}
