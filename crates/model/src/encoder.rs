//! The ModernBERT encoder over a packed batch: embeddings, layers, final norm.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::attention::attend_with;
use crate::batch::PackedBatch;
use crate::config::{AttentionKind, ModernBertConfig};
use crate::embeddings::TokenEmbeddings;
use crate::error::{ModelError, Result};
use crate::fused_attention::{attend_qkv_of, AttentionProducts, Queries, RopeTables};
use crate::kernel::AttentionKernel;
use crate::layers::{GatedLinear, LayerNorm, Linear};
use crate::packed_gemm::with_thread_buffer;
use crate::profile::timed;
use crate::weights::Weights;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Positions the RoPE tables cover at load; they grow when a longer sequence comes (up to the
/// model's max_position_embeddings), so a config's maximum never sizes memory by itself. Short:
/// the tables are computed on one thread before the layers load, and 8,192 positions took about
/// 10 ms of every start (`forward_profile`'s int8 load, median of 4: 0.139 → 0.126 s).
const INITIAL_ROPE_POSITIONS: usize = 512;

/// cos/sin tables `[positions, head_dim / 2]` for one RoPE theta: as tensors in the model
/// dtype for the candle path, and as f32 slices for the fused CPU attention.
struct Rotary {
    positions: usize,
    cos: Tensor,
    sin: Tensor,
    cos_f32: Vec<f32>,
    sin_f32: Vec<f32>,
}

impl Rotary {
    fn new(
        theta: f64,
        head_dim: usize,
        max_pos: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let half = head_dim / 2;
        // Computed in f64 and rounded once, as transformers computes them in f32 from the same formula.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos_t = Tensor::from_slice(&cos, (max_pos, half), device)?.to_dtype(dtype)?;
        let sin_t = Tensor::from_slice(&sin, (max_pos, half), device)?.to_dtype(dtype)?;
        Ok(Rotary {
            positions: max_pos,
            cos: cos_t,
            sin: sin_t,
            cos_f32: cos,
            sin_f32: sin,
        })
    }
}

struct Layer {
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: GatedLinear,
    mlp_wo: Linear,
    kind: AttentionKind,
    theta_key: u64,
}

impl Layer {
    fn load(
        w: &Weights,
        config: &ModernBertConfig,
        n: usize,
        kind: AttentionKind,
        theta: f64,
    ) -> Result<Self> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let eps = config.norm_eps;
        let p = format!("layers.{n}");
        // Layer 0 has no attn_norm in published checkpoints (the embedding norm precedes it).
        let attn_norm = if n == 0 && !w.has_encoder(&format!("{p}.attn_norm.weight")) {
            None
        } else {
            Some(LayerNorm::load(
                w,
                &format!("{p}.attn_norm"),
                true,
                h,
                config.norm_bias,
                eps,
            )?)
        };
        let linear = |name: &str, shape: (usize, usize), bias: bool| {
            Linear::load(w, &format!("{p}.{name}"), true, shape, bias)
        };
        Ok(Layer {
            attn_norm,
            wqkv: linear("attn.Wqkv", (3 * h, h), config.attention_bias)?,
            wo: linear("attn.Wo", (h, h), config.attention_bias)?,
            mlp_norm: LayerNorm::load(w, &format!("{p}.mlp_norm"), true, h, config.norm_bias, eps)?,
            wi: GatedLinear::load(w, &format!("{p}.mlp.Wi"), (i, h), config.mlp_bias)?,
            mlp_wo: linear("mlp.Wo", (h, i), config.mlp_bias)?,
            kind,
            theta_key: theta.to_bits(),
        })
    }
}

/// The activation buffers of a thread's forwards, reused across layers (see
/// [`Linear::forward_reusing`]) and across forwards, of every model the thread runs. A forward
/// with buffers of its own mapped and faulted in about 100 MB of fresh pages (26 thousand
/// faults) per 4,096 tokens of base; kept, they hold what the largest batch's forward holds
/// anyway, until the thread ends. CPU tensors only: the kernels that write into them run on
/// the CPU.
#[derive(Default)]
struct Scratch {
    /// The embeddings' LayerNorm output (the first layer's input).
    embedded: Option<Tensor>,
    /// The attention's and the MLP's LayerNorm outputs (each read only by the next product).
    normed: Option<Tensor>,
    qkv: Option<Tensor>,
    /// The attention's output (read only by `Wo`).
    attn: Option<Tensor>,
    /// `Wi`'s product and, where it is not fused into the product, its GEGLU.
    wi: [Option<Tensor>; 2],
    /// The hidden states after the attention's residual connection and after the MLP's (the
    /// next layer's input, no longer read once the first is written).
    hidden: [Option<Tensor>; 2],
}

/// The token rows a forward keeps (increasing), as the fused attention and candle read them.
#[derive(Clone, Copy)]
struct KeptRows<'a> {
    ids: &'a [u32],
    tensor: &'a Tensor,
}

/// The encoder stack: token ids in, last hidden states `[tokens, hidden]` out.
pub struct Encoder {
    tok_embeddings: TokenEmbeddings,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    rotary: RwLock<BTreeMap<u64, Arc<Rotary>>>,
    config: ModernBertConfig,
    device: Device,
    dtype: DType,
    /// The attention kernel of the candle path (set by the model after its load-time check).
    kernel: AttentionKernel,
    /// What the fused CPU attention's products run on (`None`: the candle path), chosen at
    /// load.
    fused_attention: Option<AttentionProducts>,
}

impl Encoder {
    pub(crate) fn load(
        w: &Weights,
        config: &ModernBertConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let h = config.hidden_size;
        let eps = config.norm_eps;
        let tok_embeddings = || -> Result<TokenEmbeddings> {
            let (name, shape) = ("embeddings.tok_embeddings.weight", [config.vocab_size, h]);
            Ok(match w.encoder_matrix_on_demand(name, shape)? {
                Some(table) => TokenEmbeddings::OnDemand(table),
                None => TokenEmbeddings::Loaded(w.encoder(name, &shape)?),
            })
        };
        let emb_norm = LayerNorm::load(w, "embeddings.norm", true, h, config.norm_bias, eps)?;
        let mut rotary = BTreeMap::new();
        for &(_, theta) in &config.layers {
            if let std::collections::btree_map::Entry::Vacant(e) = rotary.entry(theta.to_bits()) {
                e.insert(Arc::new(Rotary::new(
                    theta,
                    config.head_dim(),
                    config.max_position_embeddings.min(INITIAL_ROPE_POSITIONS),
                    device,
                    dtype,
                )?));
            }
        }
        let load = |(n, &(kind, theta)): (usize, &(AttentionKind, f64))| {
            Layer::load(w, config, n, kind, theta)
        };
        // On the CPU, layers load in parallel: each copies its tensors out of the mapped files
        // and packs them for the kernels, memory-bound work that one thread left half done at
        // start-up. GPU uploads stay on one thread (one stream).
        // The embedding table (opened to be read on demand, or a plain copy) loads beside them.
        let (tok_embeddings, layers) = if device.is_cpu() {
            rayon::join(tok_embeddings, || {
                config
                    .layers
                    .par_iter()
                    .enumerate()
                    .map(load)
                    .collect::<Result<Vec<_>>>()
            })
        } else {
            let layers = config
                .layers
                .iter()
                .enumerate()
                .map(load)
                .collect::<Result<Vec<_>>>();
            (tok_embeddings(), layers)
        };
        let (tok_embeddings, layers) = (tok_embeddings?, layers?);
        let final_norm = LayerNorm::load(w, "final_norm", true, h, config.norm_bias, eps)?;
        Ok(Encoder {
            tok_embeddings,
            emb_norm,
            layers,
            final_norm,
            rotary: RwLock::new(rotary),
            config: config.clone(),
            device: device.clone(),
            dtype,
            kernel: crate::kernel::choose(device, dtype, config.head_dim()),
            fused_attention: w.attention_products(config.head_dim()),
        })
    }

    /// The RoPE tables of every theta, covering at least `len` positions (grown, doubling up to
    /// max_position_embeddings, when a sequence is longer than any before).
    fn rotary_tables(&self, len: usize) -> Result<BTreeMap<u64, Arc<Rotary>>> {
        {
            let tables = self.rotary.read().unwrap_or_else(|e| e.into_inner());
            if tables.values().all(|r| r.positions >= len) {
                return Ok(tables.clone());
            }
        }
        let mut tables = self.rotary.write().unwrap_or_else(|e| e.into_inner());
        let positions = len
            .next_power_of_two()
            .min(self.config.max_position_embeddings)
            .max(len);
        for (key, rotary) in tables.iter_mut() {
            if rotary.positions < len {
                *rotary = Arc::new(Rotary::new(
                    f64::from_bits(*key),
                    self.config.head_dim(),
                    positions,
                    &self.device,
                    self.dtype,
                )?);
            }
        }
        Ok(tables.clone())
    }

    /// Positions the RoPE tables cover now (for tests of their sizing).
    #[cfg(test)]
    pub(crate) fn rope_positions(&self) -> usize {
        let tables = self.rotary.read().unwrap_or_else(|e| e.into_inner());
        tables.values().map(|r| r.positions).min().unwrap_or(0)
    }

    /// What the fused attention's products run on (`None`: candle's attention).
    pub(crate) fn attention_products(&self) -> Option<AttentionProducts> {
        self.fused_attention
    }

    /// The attention kernel in use.
    pub(crate) fn kernel(&self) -> AttentionKernel {
        self.kernel
    }

    /// Replaces the attention kernel (the model's load-time check may refuse FlashAttention-2).
    pub(crate) fn set_kernel(&mut self, kernel: AttentionKernel) {
        self.kernel = kernel;
    }

    /// The token embedding matrix as a tensor, for the MLM decoder tied to it; the encoder
    /// looks its rows up in the same tensor from then on (one copy for both).
    pub(crate) fn tied_tok_embeddings(&mut self) -> Result<Tensor> {
        let table = self.tok_embeddings.tensor()?;
        self.tok_embeddings = TokenEmbeddings::Loaded(table.clone());
        Ok(table)
    }

    /// Whether the token embeddings are read from the checkpoint on demand.
    #[cfg(test)]
    pub(crate) fn embeddings_on_demand(&self) -> bool {
        matches!(self.tok_embeddings, TokenEmbeddings::OnDemand(_))
    }

    /// The device the weights live on.
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Last hidden states `[tokens, hidden]` of a packed batch, after `final_norm`.
    pub fn forward(&self, batch: &PackedBatch) -> Result<Tensor> {
        self.forward_rows(batch, None)
    }

    /// [`forward`](Self::forward), or with `rows` (token rows, increasing) the states of those
    /// rows alone, `[rows.len(), hidden]`: the last layer's attention still reads every token's
    /// keys and values, but the fused CPU attention computes only the query blocks of `rows`,
    /// and its `Wo`, MLP and the final norm run on `rows` only.
    pub fn forward_rows(&self, batch: &PackedBatch, rows: Option<&[u32]>) -> Result<Tensor> {
        let t = batch.num_tokens();
        if let Some(rows) = rows {
            if rows.is_empty() {
                return Err(ModelError::Input("no token rows to compute".into()));
            }
            if let Some(bad) = rows.iter().find(|&&r| r as usize >= t) {
                return Err(ModelError::Input(format!(
                    "token row {bad} is outside the batch's {t} tokens"
                )));
            }
            if let Some(w) = rows.windows(2).find(|w| w[0] >= w[1]) {
                return Err(ModelError::Input(format!(
                    "token rows must increase; found {} then {}",
                    w[0], w[1]
                )));
            }
        }
        if t == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        let max_len = batch.max_len();
        if max_len > self.config.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "a sequence has {max_len} tokens; the model accepts at most max_position_embeddings = {}",
                self.config.max_position_embeddings
            )));
        }
        if let Some(bad) = batch
            .input_ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary (vocab_size = {}); is the tokenizer the model's own?",
                self.config.vocab_size
            )));
        }
        let ids = Tensor::from_slice(&batch.input_ids, t, &self.device)?;
        let positions = Tensor::from_slice(&batch.position_ids, t, &self.device)?;
        let rows_tensor = rows
            .map(|rows| Tensor::from_slice(rows, rows.len(), &self.device))
            .transpose()?;
        let rows = rows
            .zip(rows_tensor.as_ref())
            .map(|(ids, tensor)| KeptRows { ids, tensor });
        with_thread_buffer(&SCRATCH, |scratch| {
            self.forward_with(batch, (&ids, &positions), rows, scratch)
        })
    }

    /// [`forward`](Self::forward) with the thread's buffers. The result is a new tensor: the
    /// buffers' values are overwritten by the next forward.
    fn forward_with(
        &self,
        batch: &PackedBatch,
        (ids, positions): (&Tensor, &Tensor),
        rows: Option<KeptRows<'_>>,
        scratch: &mut Scratch,
    ) -> Result<Tensor> {
        // Per-token cos/sin for the candle attention path, made only when a layer takes it (the
        // fused CPU kernel reads the f32 tables directly).
        let mut tables: BTreeMap<u64, (Tensor, Tensor)> = BTreeMap::new();
        let mut hidden = timed(0, || {
            self.emb_norm.forward_reusing(
                &self.tok_embeddings.select(&batch.input_ids, ids)?,
                &mut scratch.embedded,
            )
        })?;
        let rotaries = self.rotary_tables(batch.max_len())?;
        // The rows are picked in the last layer (right after the embeddings where there is
        // none).
        let last = self.layers.len().checked_sub(1);
        if let (None, Some(rows)) = (last, rows) {
            hidden = hidden.index_select(rows.tensor, 0)?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let rotary: &Rotary = &rotaries[&layer.theta_key];
            let mut rope_rows = || -> Result<(Tensor, Tensor)> {
                if let Some(t) = tables.get(&layer.theta_key) {
                    return Ok(t.clone());
                }
                let t = (
                    rotary.cos.index_select(positions, 0)?,
                    rotary.sin.index_select(positions, 0)?,
                );
                tables.insert(layer.theta_key, t.clone());
                Ok(t)
            };
            let rows = rows.filter(|_| Some(i) == last);
            let inputs = (&hidden, batch, rotary, rows);
            hidden = self.layer_forward(layer, inputs, &mut rope_rows, scratch)?;
        }
        timed(1, || self.final_norm.forward(&hidden))
    }

    /// One layer on `x`; with `rows`, its output holds those token rows alone: the attention
    /// reads every token's keys and values (the fused CPU attention computes only the query
    /// blocks that hold those rows), and nothing after it needs the others.
    fn layer_forward(
        &self,
        layer: &Layer,
        (x, batch, rotary, rows): (&Tensor, &PackedBatch, &Rotary, Option<KeptRows<'_>>),
        rope_rows: &mut dyn FnMut() -> Result<(Tensor, Tensor)>,
        scratch: &mut Scratch,
    ) -> Result<Tensor> {
        let heads = self.config.num_attention_heads;
        // [T, 3H]; the norm is applied by the product's kernel where it can (stage 2 then).
        let qkv = match &layer.attn_norm {
            Some(norm) => layer.wqkv.forward_normalized(
                x,
                norm,
                2,
                (&mut scratch.normed, &mut scratch.qkv),
            )?,
            None => timed(2, || layer.wqkv.forward_reusing(x, &mut scratch.qkv))?,
        };
        let rope = RopeTables {
            cos: &rotary.cos_f32,
            sin: &rotary.sin_f32,
        };
        let queries = match rows {
            Some(rows) => Queries::Rows(rows.ids),
            None => Queries::Every,
        };
        let fused = match self.fused_attention {
            Some(products) => timed(4, || {
                attend_qkv_of(
                    &qkv,
                    &rope,
                    (batch, queries),
                    layer.kind,
                    heads,
                    products,
                    &mut scratch.attn,
                )
            })?,
            None => None,
        };
        let attn = match fused {
            Some(attn) => attn,
            None => {
                let (cos, sin) = rope_rows()?;
                self.attention_candle(&qkv, batch, layer.kind, &cos, &sin)?
            }
        };
        let (attn, x) = match rows {
            Some(rows) => (
                attn.index_select(rows.tensor, 0)?,
                x.index_select(rows.tensor, 0)?,
            ),
            None => (attn, x.clone()),
        };
        let x = timed(5, || {
            layer
                .wo
                .forward_add_reusing(&attn, &x, &mut scratch.hidden[0])
        })?;
        drop(qkv);
        // Stages 1 (the norm, where the product does not apply it), 6 and 7 (the product and
        // the GEGLU) are timed inside.
        let gated = layer.wi.forward_normalized(
            &x,
            &layer.mlp_norm,
            &mut scratch.normed,
            &mut scratch.wi,
        )?;
        timed(8, || {
            layer
                .mlp_wo
                .forward_add_reusing(&gated, &x, &mut scratch.hidden[1])
        })
    }

    /// Attention by candle ops (any device and dtype): `qkv [T, 3H]` in, `[T, H]` out.
    fn attention_candle(
        &self,
        qkv: &Tensor,
        batch: &PackedBatch,
        kind: AttentionKind,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let (t, three_h) = qkv.dims2()?;
        let h = three_h / 3;
        let heads = self.config.num_attention_heads;
        let hd = self.config.head_dim();
        // [T, 3H] -> [3, heads, T, head_dim]
        let (q, k, v) = timed(3, || -> Result<_> {
            let qkv = qkv
                .reshape((t, 3, heads, hd))?
                .permute((1, 2, 0, 3))?
                .contiguous()?;
            let q = candle_nn::rotary_emb::rope(&qkv.narrow(0, 0, 1)?, cos, sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope(&qkv.narrow(0, 1, 1)?, cos, sin)?.squeeze(0)?;
            let v = qkv.get(2)?;
            Ok((q, k, v))
        })?;
        let attn = timed(4, || attend_with(self.kernel, &q, &k, &v, batch, kind))?; // [heads, T, hd]
        timed(5, || {
            Ok(attn.transpose(0, 1)?.contiguous()?.reshape((t, h))?)
        })
    }
}

#[cfg(test)]
mod rope_tests {
    use std::collections::HashMap;

    use super::*;

    /// A one-layer bare encoder (hidden 8, 2 heads, vocab 10) with the given position limit.
    pub(super) fn tiny_encoder(dir: &std::path::Path, max_pos: usize) -> Encoder {
        let config = ModernBertConfig::from_json(&format!(
            r#"{{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 4,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": {max_pos}}}"#
        ))
        .unwrap();
        let dev = Device::Cpu;
        let r = |shape: &[usize]| Tensor::randn(0f32, 0.2, shape, &dev).unwrap();
        let mut w = HashMap::new();
        w.insert("embeddings.tok_embeddings.weight".to_string(), r(&[10, 8]));
        for name in ["embeddings.norm", "layers.0.mlp_norm", "final_norm"] {
            w.insert(
                format!("{name}.weight"),
                Tensor::ones(8, DType::F32, &dev).unwrap(),
            );
        }
        w.insert("layers.0.attn.Wqkv.weight".into(), r(&[24, 8]));
        w.insert("layers.0.attn.Wo.weight".into(), r(&[8, 8]));
        w.insert("layers.0.mlp.Wi.weight".into(), r(&[8, 8]));
        w.insert("layers.0.mlp.Wo.weight".into(), r(&[8, 4]));
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&w, &path).unwrap();
        let weights = Weights::open(&[path], dir, &dev, DType::F32).unwrap();
        Encoder::load(&weights, &config, &dev, DType::F32).unwrap()
    }

    #[test]
    fn rope_tables_are_sized_by_use_not_by_max_position_embeddings() {
        let tmp = tempfile::tempdir().unwrap();
        // The old encoder built tables for every allowed position at load (1e8 took 23 GB).
        let enc = tiny_encoder(tmp.path(), 1 << 20);
        assert_eq!(enc.rope_positions(), INITIAL_ROPE_POSITIONS);
        let before = enc.rotary_tables(10).unwrap();
        let hidden = enc
            .forward(&PackedBatch::from_sequences(&[vec![1u32, 5, 7, 2]]))
            .unwrap();
        assert_eq!(hidden.dims(), &[4, 8]);
        // A longer sequence grows them (doubling), keeping the rows they had.
        let grown = enc.rotary_tables(9000).unwrap();
        assert_eq!(enc.rope_positions(), 16384);
        for (key, old) in &before {
            let new = &grown[key];
            assert_eq!(new.cos_f32[..old.cos_f32.len()], old.cos_f32[..]);
            assert_eq!(new.sin_f32[..old.sin_f32.len()], old.sin_f32[..]);
        }
        // A small model is never sized beyond its own limit.
        let small = tiny_encoder(tmp.path(), 64);
        assert_eq!(small.rope_positions(), 64);
    }
}

#[cfg(test)]
mod scratch_tests {
    use super::rope_tests::tiny_encoder;
    use super::*;
    use crate::layers::shares_storage;

    /// The thread's buffer for the embeddings' norm (the own LayerNorm kernel writes it on
    /// every CPU), cloned.
    fn embedded_buffer() -> Option<Tensor> {
        SCRATCH.with(|s| s.borrow().embedded.clone())
    }

    /// A thread's forwards share its buffers: a smaller batch writes into the larger one's,
    /// every value as a fresh thread computes it, and a result handed out earlier keeps its
    /// values (the final norm's output is never a buffer).
    #[test]
    fn forwards_reuse_the_threads_buffers_and_leave_earlier_results_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let enc = tiny_encoder(tmp.path(), 64);
        let big = PackedBatch::from_sequences(&[vec![1u32, 5, 7, 2, 3], vec![1, 9, 8, 2]]);
        let small = PackedBatch::from_sequences(&[vec![1u32, 4, 6, 2]]);
        let values = |t: &Tensor| t.to_vec2::<f32>().unwrap();
        // Each on a thread of its own: fresh buffers.
        let fresh = |batch: &PackedBatch| {
            std::thread::scope(|s| s.spawn(|| values(&enc.forward(batch).unwrap())).join()).unwrap()
        };
        let (want_big, want_small) = (fresh(&big), fresh(&small));

        let first = enc.forward(&big).unwrap();
        assert_eq!(values(&first), want_big);
        let buffer = embedded_buffer().expect("the forward kept its buffer");
        assert_eq!(buffer.elem_count(), 9 * 8, "sized by the batch");
        assert_eq!(values(&enc.forward(&small).unwrap()), want_small);
        let after = embedded_buffer().unwrap();
        assert!(
            shares_storage(&buffer, &after),
            "the smaller batch wrote into the larger one's buffer"
        );
        assert_eq!(values(&first), want_big, "the first result kept its values");
        assert_eq!(values(&enc.forward(&big).unwrap()), want_big);
    }
}

#[cfg(test)]
mod embedding_tests {
    use super::rope_tests::tiny_encoder;
    use super::*;

    /// On the CPU in f32 the encoder reads its token table on demand; tied to an MLM decoder
    /// it reads the whole table once and shares it, and its forward is the same bit for bit.
    #[test]
    fn the_token_table_read_on_demand_gives_the_loaded_tables_forward() {
        let tmp = tempfile::tempdir().unwrap();
        let mut encoder = tiny_encoder(tmp.path(), 64);
        assert!(encoder.embeddings_on_demand());
        let batch = PackedBatch::from_sequences(&[vec![1u32, 5, 7, 2, 9], vec![1, 0, 8, 2]]);
        let values = |e: &Encoder| e.forward(&batch).unwrap().to_vec2::<f32>().unwrap();
        let on_demand = values(&encoder);
        let weights = Weights::open(
            &[tmp.path().join("model.safetensors")],
            tmp.path(),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let stored = weights
            .encoder("embeddings.tok_embeddings.weight", &[10, 8])
            .unwrap();
        let tied = encoder.tied_tok_embeddings().unwrap();
        assert_eq!(
            tied.to_vec2::<f32>().unwrap(),
            stored.to_vec2::<f32>().unwrap()
        );
        assert!(!encoder.embeddings_on_demand(), "one table for both");
        assert_eq!(on_demand, values(&encoder));
    }
}
