//! `mbpipe._native`: the engine behind the `mbpipe` Python package.
//!
//! [`Tasks`] holds a pipeline's tasks on loaded models (an [`Enricher`], the same one `mbpipe
//! run` uses) and adds their columns to Arrow record batches. Batches cross the boundary
//! through the Arrow C data interface as PyCapsules (`__arrow_c_array__`), without copies. The
//! GIL is released while the models run.

use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow::array::{Array as _, RecordBatch, StructArray};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use mbpipe_model::{DeviceSpec, Precision};
use mbpipe_pipeline::validate::Pipeline;
use mbpipe_pipeline::{
    input_query, EnrichOptions, Enricher, PipelineError, ResolvedModels, RowShape, RunOptions,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyTuple};

const SCHEMA_CAPSULE: &CStr = c"arrow_schema";
const ARRAY_CAPSULE: &CStr = c"arrow_array";

/// A pipeline error as the Python exception users expect: `ValueError` for a wrong pipeline,
/// input or model files (the CLI's exit code 2), `RuntimeError` otherwise; same message.
fn py_err(e: PipelineError) -> PyErr {
    if e.is_invalid_configuration() {
        PyValueError::new_err(e.to_string())
    } else {
        PyRuntimeError::new_err(e.to_string())
    }
}

/// Where and how to run, from the keyword arguments the CLI has as flags.
fn enrich_options(
    device: &str,
    dtype: &str,
    threads: Option<usize>,
    max_batch_tokens: Option<usize>,
) -> PyResult<EnrichOptions> {
    let devices = DeviceSpec::parse_list(device).map_err(PyValueError::new_err)?;
    let precision: Precision = dtype
        .parse()
        .map_err(|e| PyValueError::new_err(format!("dtype: {e}")))?;
    mbpipe_pipeline::engine::configure_threads(threads);
    Ok(EnrichOptions {
        max_batch_tokens,
        devices,
        precision,
    })
}

/// A pipeline's tasks on loaded models; call it on record batches.
#[pyclass(module = "mbpipe._native", frozen)]
struct Tasks {
    pipeline: Pipeline,
    enricher: Mutex<Enricher>,
    /// What the pipeline makes of each input schema seen so far.
    shapes: Mutex<Vec<(SchemaRef, Arc<RowShape>)>>,
}

#[pymethods]
impl Tasks {
    /// Loads the models of the pipeline whose TOML text is `source` (its `[input]` text,
    /// query and keep, and its `[[tasks]]`; the input and output paths are not used).
    #[new]
    #[pyo3(signature = (source, *, device = "cpu", dtype = "f32", threads = None, max_batch_tokens = None))]
    fn new(
        py: Python<'_>,
        source: String,
        device: &str,
        dtype: &str,
        threads: Option<usize>,
        max_batch_tokens: Option<usize>,
    ) -> PyResult<Self> {
        let opts = enrich_options(device, dtype, threads, max_batch_tokens)?;
        let file =
            mbpipe_pipeline::config::PipelineFile::parse(&source).map_err(PyValueError::new_err)?;
        let pipeline = Pipeline::from_file(file, source).map_err(PyValueError::new_err)?;
        // PyErr is built inside: a PipelineError is too large to return by value (clippy).
        let enricher = py.detach(|| {
            let resolved = ResolvedModels::resolve(&pipeline).map_err(py_err)?;
            Enricher::load(&pipeline, &resolved, &opts).map_err(py_err)
        })?;
        Ok(Self {
            pipeline,
            enricher: Mutex::new(enricher),
            shapes: Mutex::new(Vec::new()),
        })
    }

    /// The rows of `batch` (a PyCapsule pair from `__arrow_c_array__`) with the task columns
    /// added; returns the pair for the result.
    fn apply<'py>(
        &self,
        py: Python<'py>,
        schema: &Bound<'py, PyCapsule>,
        array: &Bound<'py, PyCapsule>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let batch = import_batch(schema, array)?;
        let shape = self.shape(batch.schema())?;
        let out = py.detach(|| {
            let enricher = self.enricher.lock().unwrap_or_else(|p| p.into_inner());
            enricher.apply(&shape, &batch).map_err(py_err)
        })?;
        export_batch(py, out)
    }
}

impl Tasks {
    fn shape(&self, schema: SchemaRef) -> PyResult<Arc<RowShape>> {
        let mut shapes = self.shapes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = shapes.iter().find(|(k, _)| *k == schema) {
            return Ok(s.clone());
        }
        let enricher = self.enricher.lock().unwrap_or_else(|p| p.into_inner());
        let (query, rows) = input_query(&self.pipeline, &schema).map_err(py_err)?;
        let shape = Arc::new(enricher.shape(query, &rows).map_err(py_err)?);
        shapes.push((schema, shape.clone()));
        Ok(shape)
    }
}

/// Takes the batch out of a capsule pair (the capsules are left released, as the C data
/// interface requires of a consumer).
fn import_batch(
    schema: &Bound<'_, PyCapsule>,
    array: &Bound<'_, PyCapsule>,
) -> PyResult<RecordBatch> {
    let named = |c: &Bound<'_, PyCapsule>, want: &CStr| {
        c.pointer_checked(Some(want)).map_err(|_| {
            PyValueError::new_err(format!(
                "expected a PyCapsule named {want:?} (from __arrow_c_array__)"
            ))
        })
    };
    let (schema_ptr, array_ptr) = (named(schema, SCHEMA_CAPSULE)?, named(array, ARRAY_CAPSULE)?);
    // SAFETY: the capsules' names were checked: they hold an ArrowSchema and an ArrowArray as
    // the C data interface defines them. The array is moved out (its release callback now ours,
    // an empty one left behind); the schema is only borrowed.
    let (ffi_schema, ffi_array) = unsafe {
        let s = &*(schema_ptr.as_ptr() as *const FFI_ArrowSchema);
        let a = std::ptr::replace(
            array_ptr.as_ptr() as *mut FFI_ArrowArray,
            FFI_ArrowArray::empty(),
        );
        (s, a)
    };
    let arrow_err = |e: arrow::error::ArrowError| PyValueError::new_err(e.to_string());
    let data = unsafe { from_ffi(ffi_array, ffi_schema) }.map_err(arrow_err)?;
    let fields = Schema::try_from(ffi_schema).map_err(arrow_err)?;
    let structs = StructArray::from(data);
    let batch = RecordBatch::from(structs);
    // Field metadata and the schema's own metadata come from the schema capsule.
    batch
        .with_schema(Arc::new(fields))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A batch as a `(schema, array)` capsule pair for `pyarrow.RecordBatch._import_from_c_capsule`.
fn export_batch(py: Python<'_>, batch: RecordBatch) -> PyResult<Bound<'_, PyTuple>> {
    let schema = batch.schema();
    let data = StructArray::from(batch).into_data();
    let (ffi_array, _) = to_ffi(&data).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let ffi_schema = FFI_ArrowSchema::try_from(schema.as_ref())
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let s = PyCapsule::new(py, ffi_schema, Some(SCHEMA_CAPSULE.to_owned()))?;
    let a = PyCapsule::new(py, ffi_array, Some(ARRAY_CAPSULE.to_owned()))?;
    PyTuple::new(py, [s.into_any(), a.into_any()])
}

/// `mbpipe run PIPELINE`: the CLI's run, from Python. Returns the summary as a dict (rows,
/// rejected, tokens, already_complete); raises on failure with the CLI's message.
#[pyfunction]
#[pyo3(signature = (pipeline, *, shard = None, overwrite = false, device = "cpu", dtype = "f32", threads = None, max_batch_tokens = None))]
#[allow(clippy::too_many_arguments)]
fn run<'py>(
    py: Python<'py>,
    pipeline: PathBuf,
    shard: Option<String>,
    overwrite: bool,
    device: &str,
    dtype: &str,
    threads: Option<usize>,
    max_batch_tokens: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = enrich_options(device, dtype, threads, max_batch_tokens)?;
    let outcome = py.detach(|| {
        mbpipe_pipeline::cli::run(RunOptions {
            pipeline,
            devices: opts.devices,
            precision: opts.precision,
            threads,
            max_batch_tokens: opts.max_batch_tokens,
            shard,
            overwrite,
        })
        .map_err(py_err)
    })?;
    let d = PyDict::new(py);
    d.set_item("rows", outcome.rows)?;
    d.set_item("rejected", outcome.rejected)?;
    d.set_item("tokens", outcome.tokens)?;
    d.set_item("already_complete", outcome.already_complete)?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Tasks>()?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
