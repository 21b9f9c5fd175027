//! A model ready for work: weights on a device, its tokenizer, and where it came from.

use std::sync::Arc;

use mbpipe_model::{
    load_tokenizer, Device, DeviceSpec, ModelFiles, ModelRef, ModernBert, Precision, Tokenizer,
};

use crate::error::PipelineError;

/// One model replica with its tokenizer and provenance.
pub struct LoadedModel {
    /// The network.
    pub model: ModernBert,
    /// Its tokenizer (padding and truncation off), shared by the model's text encoders.
    pub tokenizer: Arc<Tokenizer>,
    /// Resolved files (for sentence-transformers settings and manifests).
    pub files: ModelFiles,
    /// The reference as the user wrote it.
    pub reference: ModelRef,
}

impl LoadedModel {
    /// Resolves (downloading Hub models), then loads weights and tokenizer.
    pub fn load(
        reference: &str,
        revision: Option<&str>,
        device: DeviceSpec,
        precision: Precision,
    ) -> Result<Self, PipelineError> {
        let model_ref = ModelRef::parse(reference, revision)?;
        let files = ModelFiles::resolve(&model_ref)?;
        Self::load_files(model_ref, files, &device.open()?, precision)
    }

    /// Loads already-resolved files onto an open device.
    pub fn load_files(
        reference: ModelRef,
        files: ModelFiles,
        device: &Device,
        precision: Precision,
    ) -> Result<Self, PipelineError> {
        // The tokenizer parses beside the weights' packing (tens of ms off every start).
        let (model, tokenizer) = rayon::join(
            || ModernBert::load_precision(&files, device, precision),
            || load_tokenizer(&files.tokenizer),
        );
        let (model, tokenizer) = (model?, tokenizer?);
        Ok(LoadedModel {
            model,
            tokenizer: Arc::new(tokenizer),
            files,
            reference,
        })
    }

    /// Id of a special token such as `[MASK]`, or an error naming the tokenizer.
    pub fn special_token(&self, token: &str) -> Result<u32, PipelineError> {
        self.tokenizer.token_to_id(token).ok_or_else(|| {
            PipelineError::Invalid(format!(
                "the tokenizer of `{}` has no `{token}` token",
                self.reference
            ))
        })
    }

    /// A token's text as it reads in output (`Ġworld` -> ` world`).
    pub fn token_text(&self, id: u32) -> String {
        token_text(&self.tokenizer, id)
    }
}

/// A token's text as it reads in output (`Ġworld` -> ` world`).
pub fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer
        .decode(&[id], false)
        .unwrap_or_else(|_| tokenizer.id_to_token(id).unwrap_or_default())
}

/// Sizes the thread pools: `threads` for rayon (tokenization) and for candle's matrix products.
pub fn configure_threads(threads: Option<usize>) {
    if let Some(n) = threads.filter(|&n| n > 0) {
        // candle's CPU kernels read RAYON_NUM_THREADS; set it before any pool starts.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        // Fails only if the pool already exists, in which case it keeps its size.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}
