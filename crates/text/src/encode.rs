//! Tokenizing one text: cut by bytes first, then truncate to the model's length, and say so.

use std::sync::Arc;

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
    /// Shared with the model's other encoders: cloning a tokenizer copies its vocabulary and
    /// merges (tens of milliseconds of every start for ModernBERT's).
    tokenizer: Arc<Tokenizer>,
    max_length: usize,
    special_tokens: usize,
    max_bytes: usize,
}

impl TextEncoder {
    /// `max_length` counts special tokens, as transformers' truncation does.
    pub fn new(tokenizer: impl Into<Arc<Tokenizer>>, max_length: usize) -> Result<Self, TextError> {
        let tokenizer = tokenizer.into();
        let special_tokens = tokenizer
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0);
        if max_length <= special_tokens {
            return Err(TextError::Config(format!(
                "max_length {max_length} leaves no room for text (the tokenizer adds {special_tokens} special tokens)"
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

    /// Tokenizes `parts` joined into one text, cutting only the parts flagged `true` (from
    /// their ends, at token boundaries) so that the whole, special tokens included, fits
    /// `max_length`; the other parts (a prompt template's literals) are always kept whole.
    /// Several cuttable parts share the room equally. The tokens are those of the joined text
    /// (so an uncut prompt tokenizes exactly as the plain text would), each assigned to the
    /// part where it starts.
    pub fn encode_parts(&self, parts: &[(&str, bool)]) -> Result<Encoded, TextError> {
        let mut joined = String::new();
        let mut spans = Vec::with_capacity(parts.len());
        let mut byte_cut = false;
        for &(text, cuttable) in parts {
            let text = if cuttable {
                let (t, cut) = cut_at_char_boundary(text, self.max_bytes);
                byte_cut |= cut;
                t
            } else {
                text
            };
            let start = joined.len();
            joined.push_str(text);
            spans.push((start..joined.len(), cuttable));
        }
        // Offsets are needed here (encode_fast leaves them all zero) to tell the parts apart.
        let enc = self
            .tokenizer
            .encode(joined.as_str(), false)
            .map_err(|e| TextError::Tokenizer(e.to_string()))?;
        let mut part_of = Vec::with_capacity(enc.len());
        let mut current = 0;
        for &(start, _) in enc.get_offsets() {
            // Offsets only grow; a token starts in the last part whose range begins at or
            // before it (empty parts never own a token).
            while current + 1 < spans.len() && spans[current + 1].0.start <= start {
                current += 1;
            }
            part_of.push(current);
        }
        let fixed = part_of.iter().filter(|&&p| !spans[p].1).count();
        let cuttable_parts = spans.iter().filter(|s| s.1).count();
        let budget = self.max_length - self.special_tokens;
        if fixed > budget || (fixed == budget && cuttable_parts > 0) {
            return Err(TextError::Config(format!(
                "the prompt template alone is {fixed} tokens, which with {} special tokens leaves no room for the text in max_length {}",
                self.special_tokens, self.max_length
            )));
        }
        let mut kept = vec![0usize; spans.len()];
        let per_part = (budget - fixed) / cuttable_parts.max(1);
        let mut ids = Vec::with_capacity(budget);
        let mut truncated = byte_cut;
        for (&id, &p) in enc.get_ids().iter().zip(&part_of) {
            if spans[p].1 {
                if kept[p] == per_part {
                    truncated = true;
                    continue;
                }
                kept[p] += 1;
            }
            ids.push(id);
        }
        let piece = tokenizers::Encoding::from_tokens(
            ids.into_iter()
                .map(|id| tokenizers::Token::new(id, String::new(), (0, 0)))
                .collect(),
            0,
        );
        let enc = self
            .tokenizer
            .post_process(piece, None, true)
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
