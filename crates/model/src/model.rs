//! A loaded ModernBERT checkpoint: encoder plus whatever heads the checkpoint carries.

use candle_core::{DType, Device, Tensor};

use crate::batch::PackedBatch;
use crate::config::{AttentionKind, ModernBertConfig, Pooling};
use crate::encoder::Encoder;
use crate::error::{ModelError, Result};
use crate::files::ModelFiles;
use crate::fused_attention::AttentionProducts;
use crate::heads::{pool, top_k, PredictionHead};
use crate::int8_gemm::Int8Kernel;
use crate::kernel::AttentionKernel;
use crate::layers::Linear;
use crate::overrides::{CpuKernels, Overrides};
use crate::simd::Cpu;
use crate::states::{RowStates, TokenStates};
use crate::weights::{WeightPrecision, Weights};
use crate::Precision;

/// Fill-mask output of one sequence: per [MASK], the top tokens `(token_id, probability)`.
pub type MaskPredictions = Vec<Vec<(u32, f32)>>;

/// How `--dtype bf16` runs on a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuBf16 {
    /// bf16 weights on AMX tiles (`tdpbf16ps`), activations in f32.
    Tiles,
    /// bf16 weights on the AVX512-BF16 dot-product kernel, activations in f32.
    DotProduct,
    /// bf16 weights on NEON's `bfmmla` (aarch64 with BF16: Graviton 3 and 4), activations in
    /// f32; the attention in f32 on NEON.
    ArmMatrix,
    /// f32 throughout: on a CPU without bf16 instructions, candle's emulated bf16 is slower than
    /// the f32 kernels, and no more accurate.
    F32,
    /// candle's bf16 throughout (`MBPIPE_BF16_GEMM=0`: the reference the kernel is tested
    /// against).
    Candle,
}

impl CpuBf16 {
    /// The path for a CPU that has (`has_tiles`) AMX-BF16 tiles or not and (`has_dot_product`)
    /// the AVX512-BF16 instructions or not, when the own kernels are allowed (`kernel_allowed`)
    /// or not.
    pub fn choose(has_tiles: bool, has_dot_product: bool, kernel_allowed: bool) -> Self {
        match (kernel_allowed, has_tiles, has_dot_product) {
            (false, _, _) => CpuBf16::Candle,
            (true, true, _) => CpuBf16::Tiles,
            (true, false, true) => CpuBf16::DotProduct,
            (true, false, false) => CpuBf16::F32,
        }
    }

    /// The fastest path this CPU runs under the process's switches (`MBPIPE_AMX=0` leaves the
    /// tiles out, `MBPIPE_AVX512=0` the tiles and the dot-product kernel). The dot-product
    /// kernel only where `vdpbf16ps` was measured to issue more multiply-adds than the f32
    /// kernels' FMA ([`crate::issue_rate::dot_product_pays`]: Zen 4/5, not Intel's Xeons, whose
    /// bf16 runs faster on the f32 kernels when the tiles are missing: Sapphire Rapids with the
    /// tiles off, 727 against 919 tokens/s), and never on a CPU with AMX whose tiles Linux
    /// refuses.
    pub fn detect(kernel_allowed: bool) -> Self {
        if crate::f32_gemm::bf16_available() {
            return match kernel_allowed {
                true => CpuBf16::ArmMatrix,
                false => CpuBf16::Candle,
            };
        }
        let switches = Overrides::get();
        let tiles = switches.avx512 && switches.amx && crate::amx_bf16_gemm::available();
        // (The probe only where the tiles are not taken.)
        let dot_product = !tiles
            && switches.avx512
            && crate::bf16_gemm::available()
            && !crate::amx::refused("amx-bf16")
            && crate::issue_rate::dot_product_pays();
        Self::choose(tiles, dot_product, kernel_allowed)
    }
}

/// Why `--dtype bf16` runs the f32 kernels on this CPU: one answer, in one order, for the
/// load-time notice and for `validate`'s kernel line.
#[derive(Clone, Copy)]
enum Bf16OnF32 {
    /// `MBPIPE_AVX512=0`.
    Switched,
    /// The CPU has AMX but Linux refused this process the tiles.
    TilesRefused,
    /// `vdpbf16ps` issues fewer multiply-adds than the f32 kernels' FMA: this many times theirs.
    SlowDotProduct(f64),
    /// No AVX512-BF16.
    NoInstructions,
    /// aarch64 without BF16 (`bfmmla`: Armv8.6, Graviton 3 and later).
    NoArmBf16,
    /// aarch64 with BF16, the f32 kernels asked for ([`ModernBert::load_with_cpu_bf16`]).
    Asked,
    /// Neither x86-64 nor aarch64: mbpipe has no bf16 kernel for this architecture.
    NoKernel,
}

impl Bf16OnF32 {
    fn why() -> Self {
        if cfg!(target_arch = "aarch64") {
            match crate::f32_gemm::bf16_available() {
                true => Self::Asked,
                false => Self::NoArmBf16,
            }
        } else if !cfg!(target_arch = "x86_64") {
            Self::NoKernel
        } else if !Overrides::get().avx512 {
            Self::Switched
        } else if crate::amx::refused("amx-bf16") {
            Self::TilesRefused
        } else if let Some(speedup) = crate::issue_rate::dot_product_speedup() {
            Self::SlowDotProduct(speedup)
        } else {
            Self::NoInstructions
        }
    }
}

/// A ModernBERT model ready to run packed batches.
pub struct ModernBert {
    config: ModernBertConfig,
    encoder: Encoder,
    head: Option<PredictionHead>,
    decoder: Option<Linear>,
    classifier: Option<Linear>,
    /// Precision asked for.
    dtype: DType,
    /// Dtype of activations (f32 when bf16 runs on an own bf16 kernel).
    compute_dtype: DType,
    /// How bf16 runs, for bf16 on a CPU.
    cpu_bf16: Option<CpuBf16>,
    /// The CPU kernels chosen at load (none on a GPU).
    cpu_kernels: CpuKernels,
    /// The int8 kernel the encoder's linear layers run on.
    int8: Option<Int8Kernel>,
}

impl ModernBert {
    /// Loads config and weights from resolved model files onto `device` in `dtype`.
    ///
    /// `bf16` on a CPU with AMX-BF16 multiplies with bf16 weights on the tiles, on one with
    /// AVX512-BF16 on the dot-product instructions, and keeps activations, norms and softmax in
    /// f32 (more accurate than all-bf16 at the same speed); on other CPUs it runs the f32 kernels (saying so once), faster there
    /// than emulated bf16; with `MBPIPE_BF16_GEMM=0` it is candle's bf16 throughout.
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with_kernel(files, device, dtype, Overrides::get().bf16_gemm)
    }

    /// [`ModernBert::load`], choosing whether bf16 may use the AVX512-BF16 kernel (tests, benches).
    #[doc(hidden)]
    pub fn load_with_kernel(
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
        bf16_kernel: bool,
    ) -> Result<Self> {
        let path = CpuBf16::detect(bf16_kernel);
        if path == CpuBf16::F32 && dtype == DType::BF16 && device.is_cpu() {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| match Bf16OnF32::why() {
                Bf16OnF32::Switched => eprintln!(
                    "mbpipe: MBPIPE_AVX512=0: --dtype bf16 runs the f32 kernels, as on a CPU \
                     without AVX512-BF16"
                ),
                Bf16OnF32::TilesRefused => eprintln!(
                    "mbpipe: Linux refused this process the AMX tiles (a kernel before 5.16?); \
                     --dtype bf16 runs the f32 kernels (faster on this CPU than its \
                     AVX512-BF16 instructions, and at least as accurate)"
                ),
                Bf16OnF32::SlowDotProduct(speedup) => eprintln!(
                    "mbpipe: this CPU's vdpbf16ps does {speedup:.2}x the multiply-adds per \
                     second of its f32 FMA (measured at start), so --dtype bf16 runs the f32 \
                     kernels (faster here, and at least as accurate)"
                ),
                Bf16OnF32::NoInstructions => eprintln!(
                    "mbpipe: this CPU has no AVX512-BF16 instructions; --dtype bf16 runs the \
                     f32 kernels (faster here than emulated bf16, and at least as accurate)"
                ),
                Bf16OnF32::NoArmBf16 => eprintln!(
                    "mbpipe: this CPU has no BF16 instructions (bfmmla: Armv8.6, Graviton 3 and \
                     later); --dtype bf16 runs the f32 kernels (faster here than emulated bf16, \
                     and at least as accurate)"
                ),
                Bf16OnF32::Asked => {}
                Bf16OnF32::NoKernel => eprintln!(
                    "mbpipe: no bf16 kernel for this CPU architecture yet; --dtype bf16 runs \
                     in f32 (at least as accurate)"
                ),
            });
        }
        Self::load_with_cpu_bf16(files, device, dtype, path)
    }

    /// Loads in `precision`: [`Precision::Int8`] as [`ModernBert::load_int8`], the others as
    /// [`ModernBert::load`] in their dtype.
    pub fn load_precision(
        files: &ModelFiles,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        match precision {
            Precision::Int8 => Self::load_int8(files, device),
            other => Self::load(files, device, other.dtype()),
        }
    }

    /// Loads for the CPU `int8` precision: the encoder's linear layers (all but a few percent of
    /// a forward's arithmetic) quantized per output column at load and run on the int8 kernel,
    /// their activations quantized per row on every product; embeddings, LayerNorms, attention
    /// (its products in bf16 on AMX tiles where the int8 products run on tiles), the GEGLU's
    /// activation and the heads stay in f32. On a CPU without AVX2 (x86-64) or DotProd (ARM) it
    /// loads in f32 (saying so once); a GPU is refused (bf16 and f16 are its fast precisions).
    pub fn load_int8(files: &ModelFiles, device: &Device) -> Result<Self> {
        Self::load_int8_on(files, device, Int8Kernel::detect())
    }

    /// [`ModernBert::load_int8`] on the given kernel (`None`: f32), for tests on every kernel
    /// the CPU runs.
    #[doc(hidden)]
    pub fn load_int8_on(
        files: &ModelFiles,
        device: &Device,
        kernel: Option<Int8Kernel>,
    ) -> Result<Self> {
        if !device.is_cpu() {
            return Err(ModelError::Unsupported(
                "--dtype int8 runs on CPUs; on a GPU use bf16 or f16".into(),
            ));
        }
        let Some(kernel) = kernel else {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "mbpipe: this CPU has no int8 instructions mbpipe uses (AVX2 on x86-64, \
                     DotProd on ARM); --dtype int8 runs in f32"
                )
            });
            return Self::load(files, device, DType::F32);
        };
        if !kernel.available() {
            return Err(ModelError::Unsupported(format!(
                "this CPU does not run the int8 {kernel:?} kernel"
            )));
        }
        Self::load_parts(
            files,
            device,
            DType::F32,
            CpuBf16::F32,
            WeightPrecision::Int8(kernel),
        )
    }

    /// [`ModernBert::load`] with the given bf16 path for a CPU (tests: every path on any CPU;
    /// [`CpuBf16::DotProduct`] needs the AVX512-BF16 instructions, [`CpuBf16::Tiles`] AMX-BF16).
    #[doc(hidden)]
    pub fn load_with_cpu_bf16(
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
        path: CpuBf16,
    ) -> Result<Self> {
        let cpu_bf16 = (dtype == DType::BF16 && device.is_cpu()).then_some(path);
        let weights = match cpu_bf16 {
            Some(CpuBf16::Tiles) => WeightPrecision::Bf16Tiles,
            Some(CpuBf16::DotProduct) => WeightPrecision::Bf16,
            Some(CpuBf16::ArmMatrix) => WeightPrecision::Bf16Arm,
            _ => WeightPrecision::F32,
        };
        Self::load_parts(files, device, dtype, path, weights)
    }

    /// Loads in `dtype` (bf16 on a CPU by `path`), with the linear layers' weights packed in
    /// `weights` precision for the own CPU kernels.
    fn load_parts(
        files: &ModelFiles,
        device: &Device,
        dtype: DType,
        path: CpuBf16,
        weights: WeightPrecision,
    ) -> Result<Self> {
        let config = ModernBertConfig::from_file(&files.config)?;
        // Before any upload: bf16 on a GPU older than 8.0 would fail at its first kernel.
        if let Some(capability) = crate::kernel::compute_capability(device) {
            let name = crate::kernel::device_name(device);
            crate::kernel::check_precision(&name, capability, dtype)
                .map_err(ModelError::Unsupported)?;
        }
        let cpu_bf16 = (dtype == DType::BF16 && device.is_cpu()).then_some(path);
        if cpu_bf16 == Some(CpuBf16::DotProduct) && !crate::bf16_gemm::available() {
            return Err(ModelError::Unsupported(
                "the bf16 dot-product kernel needs a CPU with avx512f and avx512bf16".into(),
            ));
        }
        if cpu_bf16 == Some(CpuBf16::ArmMatrix) && !crate::f32_gemm::bf16_available() {
            return Err(ModelError::Unsupported(
                "the bf16 bfmmla kernel needs an aarch64 CPU with BF16 (Armv8.6)".into(),
            ));
        }
        if cpu_bf16 == Some(CpuBf16::Tiles) && !crate::amx_bf16_gemm::available() {
            return Err(ModelError::Unsupported(
                "the bf16 tile kernel needs a CPU with amx-bf16 and avx512bf16, and an OS that \
                 grants the tiles"
                    .into(),
            ));
        }
        let compute_dtype = match cpu_bf16 {
            Some(CpuBf16::Tiles | CpuBf16::DotProduct | CpuBf16::ArmMatrix | CpuBf16::F32) => {
                DType::F32
            }
            _ => dtype,
        };
        let mut w = Weights::open(&files.weights, &files.dir, device, compute_dtype)?;
        w.set_weight_precision(weights);
        let cpu_kernels = if device.is_cpu() {
            CpuKernels::detect()
        } else {
            CpuKernels::NONE
        };
        w.set_cpu_kernels(cpu_kernels);
        let mut encoder = Encoder::load(&w, &config, device, compute_dtype)?;
        let half_window = config
            .layers
            .iter()
            .find_map(|(kind, _)| match kind {
                AttentionKind::Local { half_window } => Some(*half_window),
                AttentionKind::Global => None,
            })
            .unwrap_or(64);
        encoder.set_kernel(crate::selfcheck::checked_kernel(
            device,
            compute_dtype,
            config.num_attention_heads,
            config.head_dim(),
            half_window,
        )?);
        let head = if w.has("head.dense.weight") {
            Some(PredictionHead::load(&w, &config)?)
        } else {
            None
        };
        let is_mlm = config
            .architectures
            .iter()
            .any(|a| a.ends_with("ForMaskedLM"))
            || w.has("decoder.bias");
        let decoder = match (&head, is_mlm) {
            (Some(_), true) => {
                // Published checkpoints omit decoder.weight: it is tied to the token embeddings.
                let weight = if w.has("decoder.weight") {
                    w.get("decoder.weight", &[config.vocab_size, config.hidden_size])?
                } else {
                    encoder.tied_tok_embeddings()?
                };
                let bias = if config.decoder_bias {
                    Some(w.get("decoder.bias", &[config.vocab_size])?)
                } else {
                    None
                };
                Some(Linear::new(weight, bias, w.packing(false))?)
            }
            _ => None,
        };
        let classifier = if w.has("classifier.weight") {
            let n = config.labels.len().max(1);
            if head.is_none() {
                return Err(ModelError::MissingTensor {
                    name: "head.dense.weight".into(),
                    dir: files.dir.clone(),
                });
            }
            Some(Linear::load(
                &w,
                "classifier",
                false,
                (n, config.hidden_size),
                true,
            )?)
        } else {
            None
        };
        Ok(ModernBert {
            config,
            encoder,
            head,
            decoder,
            classifier,
            dtype,
            compute_dtype,
            cpu_bf16,
            cpu_kernels,
            int8: match weights {
                WeightPrecision::Int8(kernel) => Some(kernel),
                _ => None,
            },
        })
    }

    /// The normalised config.
    pub fn config(&self) -> &ModernBertConfig {
        &self.config
    }

    /// Precision the model was loaded in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Dtype of activations and hidden states: the precision, except bf16 on a CPU (see
    /// [`CpuBf16`]), whose activations are f32 unless candle's bf16 was asked for.
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// Whether linear layers run on a bf16 kernel (AMX tiles, AVX512-BF16 or NEON's `bfmmla`).
    pub fn uses_bf16_kernel(&self) -> bool {
        matches!(
            self.cpu_bf16,
            Some(CpuBf16::Tiles | CpuBf16::DotProduct | CpuBf16::ArmMatrix)
        )
    }

    /// The kernels chosen at load, in words: on a CPU the f32 GEMM's and the attention's
    /// instructions (and the bf16 path), on a GPU the attention kernel.
    pub fn kernels(&self) -> String {
        if !self.device().is_cpu() {
            return format!("attention: {}", self.attention_kernel());
        }
        let bf16 = match self.cpu_bf16 {
            Some(CpuBf16::Tiles) => ", bf16 on AMX tiles",
            Some(CpuBf16::DotProduct) => ", bf16 on the AVX512-BF16 dot-product kernel",
            Some(CpuBf16::ArmMatrix) => {
                ", bf16 on the Arm bfmmla kernel (the linear layers; the attention in f32)"
            }
            Some(CpuBf16::F32) => match Bf16OnF32::why() {
                Bf16OnF32::Switched => ", bf16 on the f32 kernels (MBPIPE_AVX512=0)",
                Bf16OnF32::TilesRefused => ", bf16 on the f32 kernels (AMX tiles refused by Linux)",
                Bf16OnF32::SlowDotProduct(_) => {
                    ", bf16 on the f32 kernels (vdpbf16ps slower than their FMA here)"
                }
                Bf16OnF32::NoInstructions => ", bf16 on the f32 kernels (no AVX512-BF16)",
                Bf16OnF32::NoArmBf16 => ", bf16 on the f32 kernels (no BF16 instructions)",
                Bf16OnF32::Asked => ", bf16 on the f32 kernels (as asked)",
                Bf16OnF32::NoKernel => ", bf16 in f32 (no bf16 kernel for this architecture)",
            },
            Some(CpuBf16::Candle) => ", bf16 on candle's ops",
            None => match self.int8 {
                Some(Int8Kernel::Tiles) => {
                    ", int8 on AMX tiles (the encoder's linear layers; the rest in f32)"
                }
                Some(Int8Kernel::Avx2) => {
                    ", int8 on the AVX2 kernel (the encoder's linear layers, weights and \
                     activations in 7 bits; the rest in f32)"
                }
                Some(Int8Kernel::Avx512Bw) => {
                    ", int8 on the AVX-512 kernel (the encoder's linear layers, weights in 7 bits; \
                     the rest in f32)"
                }
                Some(Int8Kernel::AvxVnni | Int8Kernel::Avx512Vnni) => {
                    ", int8 on the VNNI kernel (the encoder's linear layers; the rest in f32)"
                }
                Some(Int8Kernel::ArmDot) => {
                    ", int8 on the Arm sdot kernel (the encoder's linear layers; the rest in f32)"
                }
                Some(Int8Kernel::ArmMatrix) => {
                    ", int8 on the Arm smmla kernel (the encoder's linear layers; the rest in f32)"
                }
                None => "",
            },
        };
        let attention = match self.encoder.attention_products() {
            Some(AttentionProducts::Bf16Tiles) => ", the attention's products in bf16 on AMX tiles",
            Some(AttentionProducts::Bf16Dot) => ", the attention's products in bf16 on vdpbf16ps",
            Some(AttentionProducts::Int8Dot(Cpu::Avx512))
                if crate::fused_attention::int8_values_in_fp16() =>
            {
                ", the attention's QKᵀ in int8 on VNNI and PV in fp16"
            }
            Some(AttentionProducts::Int8Dot(Cpu::Avx2))
                if crate::fused_attention::int8_on_avx_vnni() =>
            {
                ", the attention's QKᵀ in int8 on VNNI and PV in 16-bit integers on vpdpwssd"
            }
            Some(AttentionProducts::Int8Dot(Cpu::Avx2)) => {
                ", the attention's QKᵀ in int8 and PV in 16-bit integers on vpmaddwd"
            }
            Some(AttentionProducts::Int8Dot(_)) => ", the attention's QKᵀ in int8 on VNNI",
            _ => "",
        };
        format!("{}{bf16}{attention}", self.cpu_kernels)
    }

    /// Whether the encoder's linear layers run on an int8 kernel.
    pub fn uses_int8_kernel(&self) -> bool {
        self.int8.is_some()
    }

    /// The int8 kernel the encoder's linear layers run on.
    pub fn int8_kernel(&self) -> Option<Int8Kernel> {
        self.int8
    }

    /// How bf16 runs, for a bf16 model on a CPU.
    pub fn cpu_bf16(&self) -> Option<CpuBf16> {
        self.cpu_bf16
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.encoder.device()
    }

    /// Which attention kernel the encoder runs (its `Display` is the line logs print): on GPUs,
    /// FlashAttention-2 varlen (`flash-attn` feature, f16/bf16, compute capability 8.0+, and
    /// agreeing with the padded path at load) or padded groups of candle ops.
    pub fn attention_kernel(&self) -> AttentionKernel {
        self.encoder.kernel()
    }

    /// The attention's padding in a forward over `batch`, and all the positions it computes,
    /// summed over layers (`(padding, positions)`): zero padding on the CPU and with
    /// FlashAttention-2; the padded GPU path pads each group of sequences to its longest.
    pub fn attention_padding(&self, batch: &PackedBatch) -> (u64, u64) {
        crate::memory::attention_padding(
            &self.config,
            self.attention_kernel(),
            &batch.sorted_lengths(),
        )
    }

    /// Approximate peak device memory, in bytes, of a forward over `batch`: activations linear
    /// in its tokens, plus the attention's largest score block, which on the padded path grows
    /// with the square of the longest sequence (up to the chunking budget) and with
    /// FlashAttention-2 not at all. The out-of-memory split learns its limit in these terms, so
    /// one long document that runs out does not shrink later batches of short texts.
    pub fn memory_estimate(&self, batch: &PackedBatch) -> u64 {
        crate::memory::forward_bytes(
            &self.config,
            self.attention_kernel(),
            self.compute_dtype.size_in_bytes(),
            &batch.sorted_lengths(),
        )
    }

    /// Whether the checkpoint has a masked-LM head.
    pub fn has_mlm_head(&self) -> bool {
        self.decoder.is_some()
    }

    /// Whether the checkpoint has a sequence-classification head.
    pub fn has_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    /// Last hidden states `[tokens, hidden]` (in [`ModernBert::compute_dtype`]).
    pub fn encode(&self, batch: &PackedBatch) -> Result<Tensor> {
        self.encoder.forward(batch)
    }

    /// The last hidden states of the token rows `rows` alone (indices into the batch,
    /// increasing): what [`encode`](Self::encode) gives at those rows, with the last layer's
    /// `Wo`, MLP and the final norm run on those rows only, and on the CPU its attention on
    /// their blocks of queries only. Heads that read one row per sequence (cls pooling, a
    /// [MASK]) skip about two thirds of the last layer's products and, on long documents, most
    /// of its attention.
    pub fn encode_rows(&self, batch: &PackedBatch, rows: Vec<u32>) -> Result<RowStates> {
        let states = self.encoder.forward_rows(batch, Some(&rows))?;
        Ok(RowStates { states, kept: rows })
    }

    /// One pooled vector per sequence, `[sequences, hidden]` in f32.
    pub fn pool(
        &self,
        hidden: &impl TokenStates,
        batch: &PackedBatch,
        pooling: Pooling,
    ) -> Result<Tensor> {
        pool(hidden, batch, pooling)
    }

    /// Classifier logits `[sequences, labels]` in f32, pooled as the config says.
    pub fn classify(&self, hidden: &impl TokenStates, batch: &PackedBatch) -> Result<Tensor> {
        let (Some(head), Some(classifier)) = (&self.head, &self.classifier) else {
            return Err(ModelError::Unsupported(
                "this checkpoint has no sequence-classification head (classifier.weight)".into(),
            ));
        };
        let pooled =
            pool(hidden, batch, self.config.classifier_pooling)?.to_dtype(self.compute_dtype)?;
        Ok(classifier
            .forward(&head.forward(&pooled)?)?
            .to_dtype(DType::F32)?)
    }

    /// Vocabulary logits `[positions, vocab]` in f32 at the given token rows of the batch.
    pub fn mask_logits(&self, hidden: &impl TokenStates, rows: &[u32]) -> Result<Tensor> {
        let (Some(head), Some(decoder)) = (&self.head, &self.decoder) else {
            return Err(ModelError::Unsupported(
                "this checkpoint has no masked-LM head (head.* and decoder.bias)".into(),
            ));
        };
        let picked = hidden.rows(rows)?;
        Ok(decoder
            .forward(&head.forward(&picked)?)?
            .to_dtype(DType::F32)?)
    }

    /// Rows (token indices into the batch) holding `token_id`, grouped per sequence.
    pub fn positions_of(batch: &PackedBatch, token_id: u32) -> Vec<Vec<u32>> {
        (0..batch.num_sequences())
            .map(|i| {
                batch
                    .range(i)
                    .filter(|&r| batch.input_ids[r] == token_id)
                    .map(|r| r as u32)
                    .collect()
            })
            .collect()
    }

    /// Fill-mask: for each sequence, for each `mask_token_id` in it, the `k` most likely tokens
    /// with their probabilities (softmax over the vocabulary), best first.
    pub fn fill_mask(
        &self,
        hidden: &impl TokenStates,
        batch: &PackedBatch,
        mask_token_id: u32,
        k: usize,
    ) -> Result<Vec<MaskPredictions>> {
        let per_seq = Self::positions_of(batch, mask_token_id);
        let rows: Vec<u32> = per_seq.iter().flatten().copied().collect();
        if rows.is_empty() {
            return Ok(vec![Vec::new(); batch.num_sequences()]);
        }
        let probs = candle_nn::ops::softmax_last_dim(&self.mask_logits(hidden, &rows)?)?
            .to_vec2::<f32>()?;
        let mut next = probs.iter();
        Ok(per_seq
            .iter()
            .map(|masks| {
                masks
                    .iter()
                    .map(|_| {
                        top_k(
                            next.next()
                                .expect("one probability row per mask, this is a bug"),
                            k,
                        )
                    })
                    .collect()
            })
            .collect())
    }

    /// Logits of `candidates` at one row per sequence (`None` rows give `None`): the zero-shot
    /// recipe reads the verbalizer tokens' logits at the template's [MASK].
    pub fn candidate_logits(
        &self,
        hidden: &impl TokenStates,
        rows: &[Option<u32>],
        candidates: &[u32],
    ) -> Result<Vec<Option<Vec<f32>>>> {
        // Checked before any device work: an id past the vocabulary would be a device assert.
        let vocab = self.config.vocab_size;
        if let Some(bad) = candidates.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "verbalizer token id {bad} is outside the vocabulary (vocab_size = {vocab}); is \
                 the tokenizer the model's own?"
            )));
        }
        let present: Vec<u32> = rows.iter().flatten().copied().collect();
        if present.is_empty() {
            return Ok(vec![None; rows.len()]);
        }
        let logits = self.mask_logits(hidden, &present)?;
        let idx = Tensor::from_slice(candidates, candidates.len(), logits.device())?;
        let picked = logits.index_select(&idx, 1)?.to_vec2::<f32>()?;
        let mut next = picked.into_iter();
        Ok(rows.iter().map(|r| r.and_then(|_| next.next())).collect())
    }
}
