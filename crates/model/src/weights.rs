//! Reading tensors out of safetensors files, with errors that name the tensor and the shapes.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::embeddings::FileTable;
use crate::error::{ModelError, Result};
use crate::fused_attention::AttentionProducts;
use crate::overrides::CpuKernels;
use crate::packed_gemm::Packing;

/// The precision of the weights on the own CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightPrecision {
    F32,
    /// Every linear layer on the AVX512-BF16 kernel.
    Bf16,
    /// Every linear layer on the AMX-BF16 tile kernel.
    Bf16Tiles,
    /// Every linear layer on NEON's `bfmmla` kernel.
    Bf16Arm,
    /// The encoder's linear layers on the int8 kernel for these instructions.
    Int8(crate::int8_gemm::Int8Kernel),
}

/// Tensors of one checkpoint, converted to the engine's device and dtype on request.
pub(crate) struct Weights {
    tensors: MmapedSafetensors,
    /// The files, in the order given.
    paths: Vec<PathBuf>,
    names: HashSet<String>,
    /// `model.` for task checkpoints, empty for bare encoders.
    encoder_prefix: &'static str,
    dir: PathBuf,
    device: Device,
    dtype: DType,
    /// The precision linear layers' weights are packed in for the own CPU kernels.
    weight_precision: WeightPrecision,
    /// The CPU kernels a model chose at load (none on a GPU).
    cpu_kernels: CpuKernels,
}

impl Weights {
    /// Maps the files; every header is parsed and checked against the file size here.
    pub(crate) fn open(
        paths: &[PathBuf],
        dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        for p in paths {
            // Parse each file on its own first, so the error names the broken one.
            // SAFETY: the mapping is read-only; a file changed under us is the user's race, as in
            // every safetensors loader.
            unsafe { MmapedSafetensors::new(p) }.map_err(|e| ModelError::Weights {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        }
        // SAFETY: as above.
        let tensors =
            unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| ModelError::Weights {
                path: paths.first().cloned().unwrap_or_default(),
                reason: e.to_string(),
            })?;
        let names: HashSet<String> = tensors.tensors().into_iter().map(|(n, _)| n).collect();
        let encoder_prefix = if names.contains("model.embeddings.tok_embeddings.weight") {
            "model."
        } else if names.contains("embeddings.tok_embeddings.weight") {
            ""
        } else {
            return Err(ModelError::MissingTensor {
                name: "model.embeddings.tok_embeddings.weight".into(),
                dir: dir.to_path_buf(),
            });
        };
        Ok(Weights {
            tensors,
            paths: paths.to_vec(),
            names,
            encoder_prefix,
            dir: dir.to_path_buf(),
            device: device.clone(),
            dtype,
            weight_precision: WeightPrecision::F32,
            cpu_kernels: CpuKernels::NONE,
        })
    }

    /// Sets the precision linear layers pack their (f32) weights in (CPU, f32 activations).
    pub(crate) fn set_weight_precision(&mut self, precision: WeightPrecision) {
        self.weight_precision = precision;
    }

    /// How a linear layer packs its weight: int8 only for the encoder's layers
    /// (`encoder_layer`), whose products are nearly all of a forward; the heads' stay in f32,
    /// where a label's score or a token's probability is decided.
    pub(crate) fn packing(&self, encoder_layer: bool) -> Packing {
        match self.weight_precision {
            WeightPrecision::Bf16 => Packing::Bf16,
            WeightPrecision::Bf16Tiles => Packing::Bf16Tiles,
            WeightPrecision::Bf16Arm => Packing::Bf16Arm,
            WeightPrecision::Int8(kernel) if encoder_layer => Packing::Int8(kernel),
            _ => Packing::F32(self.cpu_kernels.gemm),
        }
    }

    /// What the fused attention's products run on (`None`: candle's attention): in bf16 where
    /// the linear layers run on bf16 or int8 hardware (unless `MBPIPE_BF16_ATTENTION=0`): AMX
    /// tiles where they run on tiles (`--dtype bf16` on AMX-BF16, `--dtype int8` on AMX-INT8
    /// where the CPU also has AMX-BF16), `vdpbf16ps` where bf16 runs on it (`--dtype bf16`, and
    /// `--dtype int8` on 512-bit VNNI where `vdpbf16ps` outruns the f32 FMA, as on Zen 4/5);
    /// `QKᵀ` in int8 for `--dtype int8` on VNNI otherwise (512-bit, or AVX-VNNI's 256-bit where
    /// the linear layers run on it; unless `MBPIPE_INT8_ATTENTION=0`); f32 on the vector units
    /// otherwise; for heads of `head_dim`
    /// (see [`AttentionProducts::for_heads`]).
    pub(crate) fn attention_products(&self, head_dim: usize) -> Option<AttentionProducts> {
        use crate::int8_gemm::Int8Kernel;
        let isa = self.cpu_kernels.attention?;
        let bf16 = match self.weight_precision {
            WeightPrecision::Bf16Tiles => Some(AttentionProducts::Bf16Tiles),
            WeightPrecision::Int8(Int8Kernel::Tiles) if crate::amx_bf16_gemm::available() => {
                Some(AttentionProducts::Bf16Tiles)
            }
            WeightPrecision::Bf16 => {
                crate::fused_attention::dot_available().then_some(AttentionProducts::Bf16Dot)
            }
            // Beside int8 only where `--dtype bf16` takes `vdpbf16ps` (where it outruns the f32
            // FMA): on an Intel Xeon without tiles (half the FMA's multiply-adds) the f32
            // attention made the int8 run 8-10% faster.
            WeightPrecision::Int8(Int8Kernel::Avx512Vnni)
                if crate::fused_attention::dot_available()
                    && crate::CpuBf16::detect(true) == crate::CpuBf16::DotProduct =>
            {
                Some(AttentionProducts::Bf16Dot)
            }
            _ => None,
        };
        // Elsewhere QKᵀ in int8: 512-bit VNNI on an Intel Xeon without tiles (`vdpbf16ps` at
        // half the FMA's rate there), 256-bit on CPUs without AVX-512 (AVX-VNNI's `vpdpbusd`,
        // else `vpmaddwd`: 2x the FMA's multiply-adds on Zen 3, where the f32 attention was
        // two fifths of an int8 forward on long documents).
        let integer_products = matches!(
            (self.weight_precision, isa),
            (
                WeightPrecision::Int8(Int8Kernel::Avx512Vnni),
                crate::simd::Cpu::Avx512
            ) | (
                WeightPrecision::Int8(Int8Kernel::AvxVnni | Int8Kernel::Avx2),
                crate::simd::Cpu::Avx2
            )
        );
        let int8 =
            (bf16.is_none() && integer_products && crate::fused_attention::int8_dot_available(isa))
                .then_some(AttentionProducts::Int8Dot(isa));
        let switches = crate::overrides::Overrides::get();
        let products = bf16
            .filter(|_| switches.bf16_attention)
            .or(int8.filter(|_| switches.int8_attention));
        Some(products.map_or(AttentionProducts::F32(isa), |p| p.for_heads(head_dim)))
    }

    /// Sets the CPU kernels the model's layers are built for.
    pub(crate) fn set_cpu_kernels(&mut self, kernels: CpuKernels) {
        self.cpu_kernels = kernels;
    }

    /// An encoder tensor (`embeddings.*`, `layers.*`, `final_norm.*`), prefix applied.
    pub(crate) fn encoder(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.get(&self.full_name(name, true), shape)
    }

    /// Whether an encoder tensor exists.
    pub(crate) fn has_encoder(&self, name: &str) -> bool {
        self.names
            .contains(&format!("{}{name}", self.encoder_prefix))
    }

    /// Whether a top-level tensor (heads) exists.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// A tensor's full name: the encoder's prefix applied when `encoder`.
    pub(crate) fn full_name(&self, name: &str, encoder: bool) -> String {
        if encoder {
            format!("{}{name}", self.encoder_prefix)
        } else {
            name.to_string()
        }
    }

    /// A tensor's f32 values read in place from the mapped file, where the engine runs f32 on
    /// the CPU and the file stores the tensor as aligned little-endian f32 (as published
    /// checkpoints do); `None` otherwise (then [`get`](Self::get) converts a copy). Packing a
    /// linear layer's weight from here skips a copy of every weight into fresh memory: that
    /// copy and its page faults were 40% of loading a model.
    pub(crate) fn stored_f32(&self, name: &str, shape: &[usize]) -> Result<Option<&[f32]>> {
        let view = self.checked_view(name, shape)?;
        if !self.device.is_cpu()
            || self.dtype != DType::F32
            || view.dtype() != safetensors::Dtype::F32
            || cfg!(target_endian = "big")
        {
            return Ok(None);
        }
        // SAFETY: f32 has no invalid bit patterns; `align_to` puts into `values` only whole,
        // aligned f32s, and the prefix check below refuses a misaligned tensor.
        let (prefix, values, _) = unsafe { view.data().align_to::<f32>() };
        if !prefix.is_empty() || values.len() != shape.iter().product::<usize>() {
            return Ok(None);
        }
        Ok(Some(values))
    }

    /// An encoder matrix to read from its file on demand ([`FileTable`]), on the terms of
    /// [`stored_f32`](Self::stored_f32); `None` where those do not hold (then
    /// [`encoder`](Self::encoder) loads it).
    pub(crate) fn encoder_matrix_on_demand(
        &self,
        name: &str,
        [rows, cols]: [usize; 2],
    ) -> Result<Option<FileTable>> {
        let name = self.full_name(name, true);
        if self.stored_f32(&name, &[rows, cols])?.is_none() {
            return Ok(None);
        }
        for path in &self.paths {
            let weights_error = |reason: String| ModelError::Weights {
                path: path.clone(),
                reason,
            };
            let file = File::open(path).map_err(|e| weights_error(e.to_string()))?;
            // SAFETY: read-only, and only its header is read (see `open`).
            let whole = unsafe { Mmap::map(&file) }.map_err(|e| weights_error(e.to_string()))?;
            let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&whole)
                .map_err(|e| weights_error(e.to_string()))?;
            if let Some(info) = metadata.info(&name) {
                // The data follow the header's 8-byte length and the header.
                let offset = 8 + header_len + info.data_offsets.0;
                return FileTable::open(file, path, offset as u64, rows, cols);
            }
        }
        Ok(None)
    }

    /// A tensor by its full name, checked against the shape the config implies.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.checked_view(name, shape)?;
        let t = self.tensors.load(name, &Device::Cpu)?;
        Ok(t.to_dtype(self.dtype)?.to_device(&self.device)?)
    }

    /// A tensor's view in the file, once its name, shape and (float) dtype are checked.
    fn checked_view(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<safetensors::tensor::TensorView<'_>> {
        if !self.names.contains(name) {
            return Err(ModelError::MissingTensor {
                name: name.to_string(),
                dir: self.dir.clone(),
            });
        }
        let view = self.tensors.get(name)?;
        if view.shape() != shape {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        // Integer weights would load (converted) into nonsense; refuse them by name.
        if !DType::try_from(view.dtype()).is_ok_and(|d| d.is_float()) {
            return Err(ModelError::TensorDtype {
                name: name.to_string(),
                found: format!("{:?}", view.dtype()),
            });
        }
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A checkpoint with an f32 and a bf16 tensor, opened for an f32 (or `dtype`) CPU engine.
    fn checkpoint(dir: &Path, dtype: DType) -> Weights {
        let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
        let f32s = Tensor::from_vec(values, (4, 6), &Device::Cpu).unwrap();
        let tensors = HashMap::from([
            ("embeddings.tok_embeddings.weight".to_string(), f32s.clone()),
            ("layers.0.w".to_string(), f32s.clone()),
            (
                "layers.0.h".to_string(),
                f32s.to_dtype(DType::BF16).unwrap(),
            ),
        ]);
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        Weights::open(&[path], dir, &Device::Cpu, dtype).unwrap()
    }

    /// The in-place values are the ones `get` copies; a tensor stored in another dtype, or an
    /// engine in another precision, takes the converting path; a wrong name or shape is the
    /// same error as from `get`.
    #[test]
    fn stored_f32_values_are_read_in_place_only_where_they_are_f32() {
        let dir = tempfile::tempdir().unwrap();
        let w = checkpoint(dir.path(), DType::F32);
        let copied = w.get("layers.0.w", &[4, 6]).unwrap();
        let copied = copied.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let in_place = w
            .stored_f32("layers.0.w", &[4, 6])
            .unwrap()
            .map(<[f32]>::to_vec);
        assert_eq!(in_place, Some(copied));
        let stored_bf16 = w
            .stored_f32("layers.0.h", &[4, 6])
            .map(|v| v.map(<[f32]>::len));
        assert_eq!(stored_bf16.unwrap(), None);
        let err = w
            .stored_f32("layers.0.w", &[6, 4])
            .map(|v| v.map(<[f32]>::len));
        assert!(
            matches!(err, Err(ModelError::TensorShape { .. })),
            "{err:?}"
        );
        let err = w
            .stored_f32("layers.0.x", &[4, 6])
            .map(|v| v.map(<[f32]>::len));
        assert!(
            matches!(err, Err(ModelError::MissingTensor { .. })),
            "{err:?}"
        );
        let bf16_engine = checkpoint(dir.path(), DType::BF16);
        let other_precision = bf16_engine
            .stored_f32("layers.0.w", &[4, 6])
            .map(|v| v.map(<[f32]>::len));
        assert_eq!(other_precision.unwrap(), None);
    }

    /// The token table's rows are read from the file: each row (first, last, repeated) as `get`
    /// loads it, and the whole table for the tied decoder too; from whichever file of a sharded
    /// checkpoint holds it. A table stored in another dtype, or an engine in another
    /// precision, is loaded instead; a wrong shape is the error `get` gives.
    #[test]
    fn encoder_matrices_are_read_on_demand_only_where_they_are_f32() {
        use crate::embeddings::TokenEmbeddings;
        let dir = tempfile::tempdir().unwrap();
        let table = "embeddings.tok_embeddings.weight";
        let ids = [3u32, 0, 3, 1];
        let rows = |t: &TokenEmbeddings| {
            let id_tensor = Tensor::new(&ids[..], &Device::Cpu).unwrap();
            t.select(&ids, &id_tensor)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        };
        let w = checkpoint(dir.path(), DType::F32);
        let loaded = TokenEmbeddings::Loaded(w.encoder(table, &[4, 6]).unwrap());
        let mapped = w.encoder_matrix_on_demand(table, [4, 6]).unwrap();
        let mapped = TokenEmbeddings::OnDemand(mapped.expect("an f32 table is read on demand"));
        assert_eq!(rows(&mapped), rows(&loaded));
        assert_eq!(rows(&mapped)[1][5], 5.0 * 0.25 - 3.0, "row 0, last column");
        let whole = |t: &TokenEmbeddings| t.tensor().unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(whole(&mapped), whole(&loaded));

        // Sharded: the table in the second file, after a tensor of another length.
        let shards = tempfile::tempdir().unwrap();
        let first = shards.path().join("model-00001-of-00002.safetensors");
        let second = shards.path().join("model-00002-of-00002.safetensors");
        let odd = Tensor::ones(7, DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("layers.0.w".to_string(), odd)]), &first)
            .unwrap();
        let values = w.encoder(table, &[4, 6]).unwrap();
        let placed = HashMap::from([
            (
                "layers.0.b".to_string(),
                Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
            ),
            (table.to_string(), values),
        ]);
        candle_core::safetensors::save(&placed, &second).unwrap();
        let sharded =
            Weights::open(&[first, second], shards.path(), &Device::Cpu, DType::F32).unwrap();
        let mapped = sharded.encoder_matrix_on_demand(table, [4, 6]).unwrap();
        assert_eq!(
            rows(&TokenEmbeddings::OnDemand(mapped.unwrap())),
            rows(&loaded)
        );

        assert!(w
            .encoder_matrix_on_demand("layers.0.h", [4, 6])
            .unwrap()
            .is_none());
        let bf16_engine = checkpoint(dir.path(), DType::BF16);
        assert!(bf16_engine
            .encoder_matrix_on_demand(table, [4, 6])
            .unwrap()
            .is_none());
        let err = w.encoder_matrix_on_demand(table, [6, 4]).err();
        assert!(
            matches!(err, Some(ModelError::TensorShape { .. })),
            "{err:?}"
        );
    }
}
