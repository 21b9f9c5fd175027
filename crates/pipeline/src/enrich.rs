//! A pipeline's tasks applied to rows: the models loaded on their devices (a worker each), the
//! tasks bound to them, and the steps of one window of rows (apply the input query, tokenize and
//! pack, run the packed batches on the workers, assemble the task columns). `mbpipe run` streams
//! a corpus through these steps window after window; [`Enricher::apply`] runs them on one Arrow
//! batch (the Python package's `Tasks`).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use mbpipe_io::SourceItem;
use mbpipe_model::{DeviceSpec, ModelFiles, ModelRef, Precision, Tokenizer};
use mbpipe_text::{pack_by_length, Packed, TextEncoder};
use rayon::prelude::*;

use crate::columns::{task_columns, RowValue};
use crate::engine::LoadedModel;
use crate::error::PipelineError;
use crate::output::ModelRecord;
use crate::query::InputQuery;
use crate::rows::{check_text_columns, row_texts};
use crate::tasks::{BoundTask, InputVariant, RowInput, TaskBatchOutput, TaskBatchRow};
use crate::validate::Pipeline;
use crate::workers::{Job, Pending, Replica, WorkerPool};

/// Input rows per window: the unit that is tokenized, packed and written together.
pub(crate) const WINDOW_ROWS: usize = 2048;

/// The distinct models of a pipeline's tasks, resolved to files (fetched from the Hub when
/// needed) but not loaded.
pub struct ResolvedModels {
    /// Each distinct (model, `quantize`) pair, in order of first use.
    pub models: Vec<ResolvedModel>,
    /// For each task, its model's index in `models`.
    pub task_model: Vec<usize>,
}

/// One model as the tasks that share it run it.
pub struct ResolvedModel {
    /// The model as written.
    pub reference: ModelRef,
    /// Its files.
    pub files: ModelFiles,
    /// The precision its tasks' `quantize` asks for instead of the run's.
    pub quantize: Option<Precision>,
}

impl ResolvedModel {
    /// The precision it runs in, in a run at `run` (`--dtype`).
    pub fn precision(&self, run: Precision) -> Precision {
        self.quantize.unwrap_or(run)
    }
}

impl ResolvedModels {
    /// Resolves every task's model once: tasks naming the same model with the same `quantize`
    /// share one copy and its encoder pass; a quantized task and a plain one on the same model
    /// load it twice, once in each precision.
    pub fn resolve(pipeline: &Pipeline) -> Result<Self, PipelineError> {
        let mut models: Vec<ResolvedModel> = Vec::new();
        let mut task_model = Vec::new();
        for t in &pipeline.tasks {
            let key = t.model.to_string();
            let same =
                |m: &ResolvedModel| m.reference.to_string() == key && m.quantize == t.quantize;
            let idx = match models.iter().position(same) {
                Some(i) => i,
                None => {
                    models.push(ResolvedModel {
                        reference: t.model.clone(),
                        files: ModelFiles::resolve(&t.model)?,
                        quantize: t.quantize,
                    });
                    models.len() - 1
                }
            };
            task_model.push(idx);
        }
        Ok(Self { models, task_model })
    }

    /// Each task's model as the manifest records it, in a run at `run` (`--dtype`).
    pub fn records(&self, pipeline: &Pipeline, run: Precision) -> Vec<ModelRecord> {
        pipeline
            .tasks
            .iter()
            .zip(&self.task_model)
            .map(|(t, &m)| ModelRecord {
                task: t.name.clone(),
                model: t.model.to_string(),
                revision: self.models[m].files.revision.clone(),
                dtype: self.models[m].precision(run).to_string(),
            })
            .collect()
    }

    /// Loads model `m` on `device` in its precision for a run at `run`. A task's `quantize`
    /// runs on CPUs only: on a GPU it is refused naming the setting.
    pub(crate) fn load(
        &self,
        m: usize,
        device: &mbpipe_model::Device,
        run: Precision,
    ) -> Result<LoadedModel, PipelineError> {
        let model = &self.models[m];
        if let (Some(q), false) = (model.quantize, device.is_cpu()) {
            return Err(PipelineError::Invalid(format!(
                "`{}`: quantize = \"{q}\" runs on CPUs; on a GPU remove it (bf16 and f16 are \
                 the GPU's fast precisions)",
                model.reference
            )));
        }
        LoadedModel::load_files(
            model.reference.clone(),
            model.files.clone(),
            device,
            model.precision(run),
        )
    }

    /// The token budget of one packed batch of each model: `max_batch_tokens` where given,
    /// else the default for the devices and that model's precision (so a quantized task on AMX
    /// tiles packs smaller batches than the f32 tasks beside it).
    pub(crate) fn batch_tokens(
        &self,
        max_batch_tokens: Option<usize>,
        devices: &[DeviceSpec],
        run: Precision,
    ) -> Vec<usize> {
        self.models
            .iter()
            .map(|m| {
                max_batch_tokens
                    .unwrap_or_else(|| crate::default_max_batch_tokens(devices, m.precision(run)))
                    .max(1)
            })
            .collect()
    }
}

/// Where and how the models run.
#[derive(Debug, Clone)]
pub struct EnrichOptions {
    /// One worker (and replica of every model) per device.
    pub devices: Vec<DeviceSpec>,
    /// Working precision.
    pub precision: Precision,
    /// Token budget of one packed batch (`None`: each model's default, see
    /// [`crate::default_max_batch_tokens`]).
    pub max_batch_tokens: Option<usize>,
}

/// A pipeline's tasks on loaded models, a worker per device; dropping it joins the workers.
pub struct Enricher {
    pipeline: Pipeline,
    tasks: Arc<Vec<BoundTask>>,
    tokenizers: Vec<Arc<Tokenizer>>,
    groups: Vec<EncodeGroup>,
    pool: WorkerPool,
    /// Each model's token budget of one packed batch.
    batch_tokens: Vec<usize>,
}

/// What a pipeline makes of rows of one input schema: its input query, the input columns it
/// keeps, and the output schema (kept columns, then task columns).
pub struct RowShape {
    query: Option<InputQuery>,
    keep: Vec<usize>,
    out_schema: SchemaRef,
}

impl RowShape {
    /// The output schema.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.out_schema
    }
}

/// The pipeline's `[input] query` over `input_schema`, checked, and the schema of its rows.
pub fn input_query(
    pipeline: &Pipeline,
    input_schema: &SchemaRef,
) -> Result<(Option<InputQuery>, SchemaRef), PipelineError> {
    let query = pipeline
        .input
        .query
        .as_deref()
        .map(|q| InputQuery::new(q, input_schema.clone()))
        .transpose()?;
    let row_schema = query
        .as_ref()
        .map_or(input_schema.clone(), |q| q.output_schema());
    check_text_columns(&pipeline.input.text, &row_schema)?;
    Ok((query, row_schema))
}

impl Enricher {
    /// Loads every model on every device and binds the tasks to them.
    pub fn load(
        pipeline: &Pipeline,
        resolved: &ResolvedModels,
        opts: &EnrichOptions,
    ) -> Result<Self, PipelineError> {
        let mut replicas: Vec<Replica> = Vec::new();
        for &device in &opts.devices {
            let dev = device.open()?;
            let mut models = Vec::new();
            for m in 0..resolved.models.len() {
                let loaded = resolved.load(m, &dev, opts.precision)?;
                if !matches!(device, DeviceSpec::Cpu) {
                    eprintln!(
                        "mbpipe: {device}: {} loaded ({}), attention: {}",
                        resolved.models[m].reference,
                        resolved.models[m].precision(opts.precision),
                        loaded.model.attention_kernel()
                    );
                }
                models.push(loaded);
            }
            replicas.push(Replica { device, models });
        }
        let first = replicas
            .first()
            .ok_or_else(|| PipelineError::Invalid("no device to run the models on".into()))?;
        let BoundTasks {
            tasks,
            tokenizers,
            groups,
        } = bind_tasks(pipeline, resolved, &first.models)?;
        let tasks = Arc::new(tasks);
        Ok(Self {
            pipeline: pipeline.clone(),
            pool: WorkerPool::start(replicas, Arc::clone(&tasks)),
            tasks,
            tokenizers,
            groups,
            batch_tokens: resolved.batch_tokens(
                opts.max_batch_tokens,
                &opts.devices,
                opts.precision,
            ),
        })
    }

    /// The worker pool (for its clock and size).
    pub(crate) fn pool(&self) -> &WorkerPool {
        &self.pool
    }

    /// What this pipeline makes of rows whose schema (after `query`) is `row_schema` (see
    /// [`row_shape`]).
    pub fn shape(
        &self,
        query: Option<InputQuery>,
        row_schema: &SchemaRef,
    ) -> Result<RowShape, PipelineError> {
        row_shape(
            &self.pipeline,
            &self.tasks,
            &self.tokenizers,
            query,
            row_schema,
        )
    }

    /// The context of windows of rows of `shape`, stopping when `stop` is set.
    pub(crate) fn context<'a>(
        &'a self,
        shape: &'a RowShape,
        stop: &'a AtomicBool,
    ) -> WindowContext<'a> {
        WindowContext {
            enricher: self,
            shape,
            stop,
        }
    }

    /// The rows of `batch` (whose schema `shape` was made for) with the task columns added,
    /// exactly as `mbpipe run` writes them: the same windows, packing, tasks and columns.
    pub fn apply(
        &self,
        shape: &RowShape,
        batch: &RecordBatch,
    ) -> Result<RecordBatch, PipelineError> {
        let never = AtomicBool::new(false);
        let ctx = self.context(shape, &never);
        let mut out = Vec::new();
        let mut offset = 0;
        // One window ahead on the workers while the previous one is assembled, as in a run.
        let mut in_flight: Option<SubmittedWindow> = None;
        while offset < batch.num_rows() || in_flight.is_some() {
            let next = if offset < batch.num_rows() {
                let len = WINDOW_ROWS.min(batch.num_rows() - offset);
                let window = prepare_rows(&ctx, batch.slice(offset, len))?;
                offset += len;
                Some(submit_window(&ctx, window))
            } else {
                None
            };
            if let Some(done) = std::mem::replace(&mut in_flight, next) {
                let (rows, _) = finish_window(&ctx, done)?
                    .expect("no stop flag is ever set here; this is a bug");
                out.push(rows);
            }
        }
        Ok(arrow::compute::concat_batches(&shape.out_schema, &out)?)
    }
}

/// A pipeline's tasks bound to its models.
pub(crate) struct BoundTasks {
    pub(crate) tasks: Vec<BoundTask>,
    /// Each model's tokenizer, in model order.
    pub(crate) tokenizers: Vec<Arc<Tokenizer>>,
    groups: Vec<EncodeGroup>,
}

/// Binds every task to its model (`models`: one device's replicas, in `resolved` order) and
/// groups the tasks by encoder pass; refuses what a task needs that its model lacks.
pub(crate) fn bind_tasks(
    pipeline: &Pipeline,
    resolved: &ResolvedModels,
    models: &[LoadedModel],
) -> Result<BoundTasks, PipelineError> {
    let tasks: Vec<BoundTask> = pipeline
        .tasks
        .iter()
        .zip(&resolved.task_model)
        .map(|(spec, &m)| BoundTask::bind(spec, m, &models[m]))
        .collect::<Result<_, _>>()?;
    let tokenizers: Vec<Arc<Tokenizer>> = models.iter().map(|m| Arc::clone(&m.tokenizer)).collect();
    let groups = encode_groups(&tasks, &tokenizers)?;
    Ok(BoundTasks {
        tasks,
        tokenizers,
        groups,
    })
}

/// What `pipeline`'s bound `tasks` make of rows whose schema (after `query`) is `row_schema`:
/// the kept columns, then the task columns. Refuses a `keep` naming a missing column and task
/// columns that clash with kept ones.
pub(crate) fn row_shape(
    pipeline: &Pipeline,
    tasks: &[BoundTask],
    tokenizers: &[Arc<Tokenizer>],
    query: Option<InputQuery>,
    row_schema: &SchemaRef,
) -> Result<RowShape, PipelineError> {
    let keep: Vec<usize> = match &pipeline.input.keep {
        None => (0..row_schema.fields().len()).collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                row_schema.index_of(n).map_err(|_| {
                    PipelineError::Invalid(format!(
                        "[input] keep names column `{n}`, which the input does not have"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let mut fields: Vec<Field> = keep.iter().map(|&i| row_schema.field(i).clone()).collect();
    for f in empty_task_columns(tasks, tokenizers) {
        if fields.iter().any(|g| g.name() == f.name()) {
            return Err(PipelineError::Invalid(format!(
                "output column `{}` would clash with an input column of that name; rename the task or drop the column with `keep`",
                f.name()
            )));
        }
        fields.push(f);
    }
    Ok(RowShape {
        query,
        keep,
        out_schema: Arc::new(Schema::new(fields)),
    })
}

/// Tasks sharing one encoder pass: same model, same input variant, same limit.
pub(crate) struct EncodeGroup {
    model: usize,
    variant: InputVariant,
    encoder: TextEncoder,
    tasks: Arc<Vec<usize>>,
}

pub(crate) fn encode_groups(
    tasks: &[BoundTask],
    tokenizers: &[Arc<Tokenizer>],
) -> Result<Vec<EncodeGroup>, PipelineError> {
    let mut groups: Vec<EncodeGroup> = Vec::new();
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        let variant = t.input_variant();
        let found = groups.iter().position(|g| {
            g.model == t.model && g.variant == variant && g.encoder.max_length() == t.max_length
        });
        let g = match found {
            Some(g) => g,
            None => {
                groups.push(EncodeGroup {
                    model: t.model,
                    variant,
                    encoder: TextEncoder::new(Arc::clone(&tokenizers[t.model]), t.max_length)?,
                    tasks: Arc::new(Vec::new()),
                });
                groups.len() - 1
            }
        };
        members.entry(g).or_default().push(i);
    }
    for (g, m) in members {
        groups[g].tasks = Arc::new(m);
    }
    Ok(groups)
}

/// Column fields of every task, from a zero-row build (names and types only).
pub(crate) fn empty_task_columns(tasks: &[BoundTask], tokenizers: &[Arc<Tokenizer>]) -> Vec<Field> {
    tasks
        .iter()
        .flat_map(|t| {
            task_columns(t, &tokenizers[t.model], &[])
                .into_iter()
                .map(|(f, _)| f)
        })
        .collect()
}

/// Everything a window needs besides its rows.
pub(crate) struct WindowContext<'a> {
    enricher: &'a Enricher,
    shape: &'a RowShape,
    /// Set by SIGINT/SIGTERM: waits for results give up, so a stop takes one batch.
    stop: &'a AtomicBool,
}

/// A window tokenized and packed, ready for the workers.
pub(crate) struct PreparedWindow {
    /// The rows (after the input query).
    rows: RecordBatch,
    /// Per encode group, in group order.
    groups: Vec<PreparedGroup>,
}

/// One encode group's share of a window: each row's input (None for a null text) and the
/// packed batches, keyed by (row, chunk).
pub(crate) type PreparedGroup = (Vec<Option<RowInput>>, Vec<Packed<(usize, usize)>>);

/// What the tokenizing thread hands to the compute loop, in input order.
pub(crate) enum Prepared {
    Rejected(mbpipe_io::Rejection),
    Window {
        file: usize,
        first_row: u64,
        input_rows: u64,
        window: PreparedWindow,
    },
}

/// Applies the query to a source item and tokenizes and packs its rows.
pub(crate) fn prepare(
    ctx: &WindowContext<'_>,
    item: SourceItem,
) -> Result<Prepared, PipelineError> {
    let sb = match item {
        SourceItem::Rejected(r) => return Ok(Prepared::Rejected(r)),
        SourceItem::Batch(sb) => sb,
    };
    let input_rows = sb.batch.num_rows() as u64;
    Ok(Prepared::Window {
        file: sb.file,
        first_row: sb.first_row,
        input_rows,
        window: prepare_rows(ctx, sb.batch)?,
    })
}

/// Applies the query to input rows and tokenizes and packs them.
fn prepare_rows(
    ctx: &WindowContext<'_>,
    batch: RecordBatch,
) -> Result<PreparedWindow, PipelineError> {
    let rows = match &ctx.shape.query {
        Some(q) => q.apply(batch)?,
        None => batch,
    };
    let texts = row_texts(&ctx.enricher.pipeline.input.text, &rows)?;
    let mut groups = Vec::with_capacity(ctx.enricher.groups.len());
    for group in &ctx.enricher.groups {
        let inputs: Vec<Option<RowInput>> = texts
            .par_iter()
            .map(|t| {
                t.as_deref()
                    .map(|t| group.variant.encode(&group.encoder, t))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        // Key: (row, chunk).
        let seqs = inputs
            .iter()
            .enumerate()
            .filter_map(|(row, inp)| inp.as_ref().map(|inp| (row, inp)))
            .flat_map(|(row, inp)| {
                inp.sequences
                    .iter()
                    .enumerate()
                    .map(move |(c, s)| ((row, c), s.as_slice()))
            });
        let packed = pack_by_length(seqs, ctx.enricher.batch_tokens[group.model]);
        groups.push((inputs, packed));
    }
    Ok(PreparedWindow { rows, groups })
}

/// A window whose batches are on the workers.
pub(crate) struct SubmittedWindow {
    rows: RecordBatch,
    groups: Vec<SubmittedGroup>,
    tokens: u64,
}

/// One encode group's share of a submitted window: each row's input, the (row, chunk) keys of
/// each packed batch, and the pending results.
pub(crate) type SubmittedGroup = (Vec<Option<RowInput>>, Vec<Vec<(usize, usize)>>, Pending);

/// Hands a prepared window's batches to the workers and returns at once.
pub(crate) fn submit_window(ctx: &WindowContext<'_>, window: PreparedWindow) -> SubmittedWindow {
    let PreparedWindow {
        rows,
        groups: prepared,
    } = window;
    let mut tokens = 0u64;
    let mut groups = Vec::with_capacity(prepared.len());
    for (group, (inputs, packed)) in ctx.enricher.groups.iter().zip(prepared) {
        tokens += packed
            .iter()
            .map(|p| p.batch.num_tokens() as u64)
            .sum::<u64>();
        let keys: Vec<Vec<(usize, usize)>> = packed.iter().map(|p| p.keys.clone()).collect();
        let jobs: Vec<Job> = packed
            .into_iter()
            .enumerate()
            .map(|(tag, p)| Job {
                model: group.model,
                tasks: Arc::clone(&group.tasks),
                batch: p.batch,
                tag,
            })
            .collect();
        groups.push((inputs, keys, ctx.enricher.pool.submit(jobs)));
    }
    SubmittedWindow {
        rows,
        groups,
        tokens,
    }
}

/// Waits for a submitted window's results and assembles its output batch; returns it with its
/// real tokens, or None when a stop signal came first.
pub(crate) fn finish_window(
    ctx: &WindowContext<'_>,
    window: SubmittedWindow,
) -> Result<Option<(RecordBatch, u64)>, PipelineError> {
    let (
        Enricher {
            tasks,
            groups,
            tokenizers,
            ..
        },
        RowShape {
            keep, out_schema, ..
        },
    ) = (ctx.enricher, ctx.shape);
    let stop = ctx.stop;
    let SubmittedWindow {
        rows,
        groups: submitted,
        tokens,
    } = window;
    let n = rows.num_rows();
    let mut values: Vec<Vec<RowValue>> = vec![vec![None; n]; tasks.len()];
    for (group, (inputs, keys, pending)) in groups.iter().zip(submitted) {
        // Per task in the group, per row: the sequence outputs in chunk order.
        let mut per_row: Vec<Vec<Vec<(usize, TaskBatchRow)>>> =
            vec![vec![Vec::new(); n]; group.tasks.len()];
        let Some(results) = pending.wait_unless(stop)? else {
            return Ok(None);
        };
        for (tag, outputs) in results {
            for (slot, output) in outputs.into_iter().enumerate() {
                for ((row, chunk), r) in keys[tag].iter().zip(TaskBatchOutput::into_rows(output)) {
                    per_row[slot][*row].push((*chunk, r));
                }
            }
        }
        for (slot, &task_idx) in group.tasks.iter().enumerate() {
            for (row, parts) in per_row[slot].drain(..).enumerate() {
                let Some(inp) = &inputs[row] else { continue };
                let mut parts = parts;
                parts.sort_by_key(|(c, _)| *c);
                let value = tasks[task_idx].finish_row(parts.into_iter().map(|(_, r)| r).collect());
                values[task_idx][row] = Some((value, inp.truncated));
            }
        }
    }
    let mut columns: Vec<arrow::array::ArrayRef> =
        keep.iter().map(|&i| rows.column(i).clone()).collect();
    for (t, task) in tasks.iter().enumerate() {
        columns.extend(
            task_columns(task, &tokenizers[task.model], &values[t])
                .into_iter()
                .map(|(_, a)| a),
        );
    }
    let batch = RecordBatch::try_new(out_schema.clone(), columns)?;
    Ok(Some((batch, tokens)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::PipelineFile;
    use crate::{DEFAULT_AMX_MAX_BATCH_TOKENS, DEFAULT_MAX_BATCH_TOKENS};

    /// The sample moderation model's folder.
    fn moderation() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sample_data/models/moderation")
    }

    /// A pipeline of classify tasks on the sample moderation model: each `(name, extra TOML
    /// lines)`.
    fn moderation_pipeline(tasks: &[(&str, &str)]) -> Pipeline {
        let mut text = "[input]\npath = \"x.jsonl\"\n[output]\npath = \"out\"\n".to_string();
        for (name, extra) in tasks {
            text += &format!(
                "[[tasks]]\nname = \"{name}\"\nkind = \"classify\"\nmodel = \"{}\"\n{extra}\n",
                moderation().display()
            );
        }
        Pipeline::from_file(PipelineFile::parse(&text).unwrap(), text).unwrap()
    }

    #[test]
    fn tasks_share_a_model_only_at_the_same_quantize_and_each_model_packs_its_own_batches() {
        let int8 = "quantize = \"int8\"";
        let pipeline = moderation_pipeline(&[("a", ""), ("b", int8), ("c", ""), ("d", int8)]);
        let resolved = ResolvedModels::resolve(&pipeline).unwrap();
        assert_eq!(resolved.task_model, [0, 1, 0, 1]);
        assert_eq!(resolved.models.len(), 2);
        assert_eq!(
            resolved.models[0].precision(Precision::Bf16),
            Precision::Bf16
        );
        assert_eq!(
            resolved.models[1].precision(Precision::Bf16),
            Precision::Int8
        );
        let dtypes: Vec<String> = resolved
            .records(&pipeline, Precision::F32)
            .into_iter()
            .map(|r| r.dtype)
            .collect();
        assert_eq!(dtypes, ["f32", "int8", "f32", "int8"]);

        let cpu = [DeviceSpec::Cpu];
        let int8 = if Precision::Int8.runs_on_cpu_tiles() {
            DEFAULT_AMX_MAX_BATCH_TOKENS
        } else {
            DEFAULT_MAX_BATCH_TOKENS
        };
        assert_eq!(
            resolved.batch_tokens(None, &cpu, Precision::F32),
            [DEFAULT_MAX_BATCH_TOKENS, int8]
        );
        assert_eq!(
            resolved.batch_tokens(Some(300), &cpu, Precision::F32),
            [300, 300]
        );
    }

    /// A model's text encoders all read its one tokenizer: a copy of ModernBERT's (its
    /// vocabulary and merges) took tens of milliseconds of every start, three times.
    #[test]
    fn encoders_share_their_models_tokenizer() {
        let pipeline = moderation_pipeline(&[("a", ""), ("b", "max_length = 64")]);
        let resolved = ResolvedModels::resolve(&pipeline).unwrap();
        let loaded = LoadedModel::load(
            &moderation().display().to_string(),
            None,
            DeviceSpec::Cpu,
            Precision::F32,
        )
        .unwrap();
        let bound = bind_tasks(&pipeline, &resolved, std::slice::from_ref(&loaded)).unwrap();
        let shared = |t: &Tokenizer| std::ptr::eq(t, &*loaded.tokenizer);
        assert_eq!(bound.groups.len(), 2, "one encoder per length limit");
        assert!(bound.groups.iter().all(|g| shared(g.encoder.tokenizer())));
        assert!(bound.tokenizers.iter().all(|t| shared(t)));
    }
}
