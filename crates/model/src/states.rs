//! The last hidden states that the heads read, by token row (an index into the packed batch):
//! every token's ([`ModernBert::encode`](crate::ModernBert::encode), a plain tensor) or only
//! the rows the tasks read ([`RowStates`], from
//! [`ModernBert::encode_rows`](crate::ModernBert::encode_rows)).

use candle_core::Tensor;

use crate::error::{ModelError, Result};

/// Hidden states that heads read by token row.
pub trait TokenStates {
    /// The states of token rows `rows`, `[rows.len(), hidden]`, in that order; an error where
    /// a row is outside the batch or was not computed.
    fn rows(&self, rows: &[u32]) -> Result<Tensor>;
    /// Every token's states, `[tokens, hidden]`; an error where only some rows were computed.
    fn every_row(&self) -> Result<&Tensor>;
}

/// `[tokens, hidden]`: every token's states.
impl TokenStates for Tensor {
    fn rows(&self, rows: &[u32]) -> Result<Tensor> {
        // On a GPU an index past the end is a device assert that poisons the worker's context.
        let tokens = self.dim(0)?;
        if let Some(bad) = rows.iter().find(|&&r| r as usize >= tokens) {
            return Err(ModelError::Input(format!(
                "token row {bad} is outside the batch's {tokens} tokens"
            )));
        }
        let idx = Tensor::from_slice(rows, rows.len(), self.device())?;
        Ok(self.index_select(&idx, 0)?)
    }

    fn every_row(&self) -> Result<&Tensor> {
        Ok(self)
    }
}

/// The states of some token rows of a batch: `states[i]` is token row `kept[i]`'s.
#[derive(Debug)]
pub struct RowStates {
    pub(crate) states: Tensor,
    pub(crate) kept: Vec<u32>,
}

impl RowStates {
    /// The token rows computed, increasing.
    pub fn kept(&self) -> &[u32] {
        &self.kept
    }

    /// Their states, `[kept.len(), hidden]`.
    pub fn states(&self) -> &Tensor {
        &self.states
    }
}

impl TokenStates for RowStates {
    fn rows(&self, rows: &[u32]) -> Result<Tensor> {
        let at: Vec<u32> = rows
            .iter()
            .map(|r| {
                self.kept.binary_search(r).map(|i| i as u32).map_err(|_| {
                    ModelError::Input(format!(
                        "token row {r} was not computed: this forward kept only the {} rows its \
                         tasks read",
                        self.kept.len()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        self.states.rows(&at)
    }

    fn every_row(&self) -> Result<&Tensor> {
        Err(ModelError::Input(format!(
            "every token's states were asked for, but this forward kept only the {} rows its \
             tasks read",
            self.kept.len()
        )))
    }
}
