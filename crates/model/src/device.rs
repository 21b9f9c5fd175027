//! Devices and dtypes as users name them on the command line.

use candle_core::{DType, Device};

use crate::error::{ModelError, Result};

/// Numeric precision of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit float (default; matches the reference to ~1e-5).
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
    /// int8 linear layers on the CPU (see `ModernBert::load_int8`); activations in f32.
    Int8,
}

impl Precision {
    /// The candle dtype of the activations.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 | Precision::Int8 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// Whether this precision's linear layers run on the CPU's AMX tiles here (bf16 on
    /// AMX-BF16, int8 on AMX-INT8, under the process's switches), the kernels whose best batch
    /// is smaller than the others' (see `mbpipe_pipeline::default_max_batch_tokens`).
    pub fn runs_on_cpu_tiles(self) -> bool {
        let switches = crate::Overrides::get();
        match self {
            Precision::Bf16 => crate::CpuBf16::detect(switches.bf16_gemm) == crate::CpuBf16::Tiles,
            Precision::Int8 => {
                crate::int8_gemm::Int8Kernel::detect() == Some(crate::int8_gemm::Int8Kernel::Tiles)
            }
            Precision::F32 | Precision::F16 => false,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "float16" => Ok(Precision::F16),
            "int8" => Ok(Precision::Int8),
            other => Err(format!(
                "dtype must be f32, bf16, f16 or int8, found `{other}`"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
        })
    }
}

/// One compute device: the CPU, or one CUDA GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// All CPU cores (one worker).
    Cpu,
    /// CUDA device by ordinal.
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses `cpu` or `cuda`, `cuda:0`, `cuda:0,1,...` into one spec per device.
    pub fn parse_list(s: &str) -> Result<Vec<DeviceSpec>, String> {
        let s = s.trim();
        if s == "cpu" {
            return Ok(vec![DeviceSpec::Cpu]);
        }
        let Some(rest) = s.strip_prefix("cuda") else {
            return Err(format!(
                "device must be `cpu` or `cuda:0,1,...`, found `{s}`"
            ));
        };
        let list = rest
            .strip_prefix(':')
            .unwrap_or(if rest.is_empty() { "0" } else { rest });
        let mut out = Vec::new();
        for part in list.split(',') {
            let n: usize = part.trim().parse().map_err(|_| {
                format!("`{part}` in `{s}` is not a GPU number (expected e.g. cuda:0,1)")
            })?;
            if out.contains(&DeviceSpec::Cuda(n)) {
                return Err(format!("GPU {n} is listed twice in `{s}`"));
            }
            out.push(DeviceSpec::Cuda(n));
        }
        Ok(out)
    }

    /// Opens the device.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(ModelError::Unsupported(format!(
                        "device cuda:{n} requested, but this mbpipe was built without the `cuda` feature \
                         (cargo build --release --features cuda)"
                    )));
                }
                Ok(Device::new_cuda(n)?)
            }
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_lists() {
        assert_eq!(
            DeviceSpec::parse_list("cpu").unwrap(),
            vec![DeviceSpec::Cpu]
        );
        assert_eq!(
            DeviceSpec::parse_list("cuda:0,1").unwrap(),
            vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]
        );
        assert_eq!(
            DeviceSpec::parse_list("cuda").unwrap(),
            vec![DeviceSpec::Cuda(0)]
        );
        assert!(DeviceSpec::parse_list("cuda:0,0").is_err());
        assert!(DeviceSpec::parse_list("tpu").is_err());
    }

    /// Every precision reads back from the name it prints (the manifest and the resume
    /// fingerprint store that name), int8's activations are f32, and a bad name lists them all.
    #[test]
    fn precisions_round_trip_through_their_names() {
        for p in [
            Precision::F32,
            Precision::Bf16,
            Precision::F16,
            Precision::Int8,
        ] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(Precision::Int8.dtype(), DType::F32);
        let err = "int4".parse::<Precision>().unwrap_err();
        assert!(
            err.contains("f32, bf16, f16 or int8") && err.contains("int4"),
            "{err}"
        );
    }

    /// Only bf16 and int8 have tile kernels, and they claim the tiles only where the CPU and
    /// the OS grant them (a batch budget chosen for tiles on a CPU without them would be slow).
    #[test]
    fn only_bf16_and_int8_run_on_tiles_and_only_where_granted() {
        assert!(!Precision::F32.runs_on_cpu_tiles());
        assert!(!Precision::F16.runs_on_cpu_tiles());
        if Precision::Bf16.runs_on_cpu_tiles() {
            assert!(crate::amx_bf16_gemm::available());
        }
        if Precision::Int8.runs_on_cpu_tiles() {
            assert!(crate::int8_gemm::Int8Kernel::Tiles.available());
        }
    }
}
