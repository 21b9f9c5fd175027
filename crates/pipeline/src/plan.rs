//! The run plan: everything `mbpipe run` decides and checks before it changes the output folder
//! or reads a row, decided by reading only. `mbpipe validate` builds the same plan (with the same
//! flags) and prints it, so it fails wherever a run would fail before its first row; `run`
//! builds it, then executes it.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use mbpipe_io::{expand_inputs, unified_schema, InputFile, OutputDir};
use mbpipe_model::{ModelError, ModelFiles, ModelRef};

use crate::enrich::{input_query, ResolvedModels};
use crate::error::PipelineError;
use crate::names::OutputNames;
use crate::query::InputQuery;
use crate::resume::{self, FileStamp, Fingerprint, ModelStamp, Resumed};
use crate::runner::RunOptions;
use crate::validate::Pipeline;

/// A checked plan for one run (or shard).
pub struct RunPlan {
    /// The parsed, checked pipeline file.
    pub pipeline: Pipeline,
    /// This run's shard and the output names that follow from it.
    pub names: OutputNames,
    /// Every input file of the run, all shards.
    pub all_files: Vec<InputFile>,
    /// This shard's input files (all of them when unsharded).
    pub files: Vec<InputFile>,
    /// One schema over every input file (so all shards write one table).
    pub input_schema: SchemaRef,
    /// The `[input] query`, checked over `input_schema`.
    pub query: Option<InputQuery>,
    /// The rows' schema after the query.
    pub row_schema: SchemaRef,
    /// The output folder or bucket prefix.
    pub out_dir: OutputDir,
    /// Its entries now (mbpipe's own files only; checked).
    pub entries: Vec<String>,
    /// A stale lock there that the run would take over (a live one fails the plan).
    pub stale_lock: Option<String>,
    /// What the run does: nothing (complete), or run with these models.
    pub work: Work,
}

/// What a run of the plan does.
pub enum Work {
    /// The output is complete (its success marker exists, no `--overwrite`): a run does nothing.
    /// For `validate` the models are still resolved, to be checked.
    Complete {
        /// The models (`validate` only).
        models: Option<ResolvedModels>,
    },
    /// Load these models and run; resuming `resumed` (the committed parts kept), or from the
    /// start.
    Run {
        /// The models, resolved to files (not loaded).
        models: ResolvedModels,
        /// What the journal records, for a resume to compare.
        fingerprint: Fingerprint,
        /// What a previous unfinished run left that this one keeps.
        resumed: Resumed,
    },
    /// `validate` only: a Hub model could not be fetched (offline, not cached), so the models and
    /// the start in the output folder are not checked.
    Unfetched {
        /// Which model and why.
        reason: String,
    },
}

impl Work {
    /// The resolved models, where the plan has them.
    pub fn models(&self) -> Option<&ResolvedModels> {
        match self {
            Work::Complete { models } => models.as_ref(),
            Work::Run { models, .. } => Some(models),
            Work::Unfetched { .. } => None,
        }
    }
}

/// Who the plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `mbpipe run`: stops at a complete output; every model must be reachable.
    Run,
    /// `mbpipe validate`: also checks the models of a complete output, and reports a Hub model
    /// it cannot fetch instead of failing.
    Validate,
}

impl RunPlan {
    /// Builds and checks the plan for `opts`, reading only: the pipeline file, `--shard`, the
    /// inputs and their schema, the query and text columns, the output folder (placement, foreign
    /// files, layout, not held by a running mbpipe), whether it is complete, the models' files, the devices, and how the run
    /// would start in the folder (resume or `--overwrite`).
    pub fn build(opts: &RunOptions, purpose: Purpose) -> Result<Self, PipelineError> {
        let pipeline = Pipeline::load(&opts.pipeline)?;
        let shard = crate::shard::parse(opts.shard.as_deref())?;
        let names = OutputNames { shard };
        let all_files = expand_inputs(&pipeline.input.path)?;
        let input_schema = with_text_columns_if_empty(unified_schema(&all_files)?, &pipeline);
        let (query, row_schema) = input_query(&pipeline, &input_schema)?;
        let out_dir = OutputDir::new(&pipeline.output_dir)?;
        let entries = crate::folder::inspect(&out_dir, names, &pipeline.input.path, &all_files)?;
        // A run holding the folder now refuses this one at once; so does the plan.
        let stale_lock = match entries.contains(&names.lock()) {
            true => crate::lock::check_free(&out_dir, &names.lock())?,
            false => None,
        };
        let files = match shard {
            Some((i, n)) => mbpipe_io::shard_files(&all_files, i, n)?,
            None => all_files.clone(),
        };
        let mut plan = Self {
            pipeline,
            names,
            all_files,
            files,
            input_schema,
            query,
            row_schema,
            out_dir,
            entries,
            stale_lock,
            work: Work::Complete { models: None },
        };
        let complete = !opts.overwrite && plan.entries.contains(&names.success());
        if complete && purpose == Purpose::Run {
            return Ok(plan);
        }
        for &device in &opts.devices {
            device.open()?;
        }
        let models = match ResolvedModels::resolve(&plan.pipeline) {
            Err(PipelineError::Model(e @ ModelError::Hub { .. }))
                if purpose == Purpose::Validate =>
            {
                plan.work = Work::Unfetched {
                    reason: e.to_string(),
                };
                return Ok(plan);
            }
            resolved => resolved?,
        };
        if complete {
            plan.work = Work::Complete {
                models: Some(models),
            };
            return Ok(plan);
        }
        let fingerprint = plan.fingerprint(&models, opts)?;
        let resumed = plan
            .resume(&plan.entries, &fingerprint, opts.overwrite)?
            .resumed;
        resume::remaining_inputs(plan.files.clone(), &resumed)?;
        plan.work = Work::Run {
            models,
            fingerprint,
            resumed,
        };
        Ok(plan)
    }

    /// How the run starts in the output folder whose entries are `entries`: what it keeps and
    /// deletes (see [`resume::plan`]). Reads only.
    pub(crate) fn resume(
        &self,
        entries: &[String],
        fingerprint: &Fingerprint,
        overwrite: bool,
    ) -> Result<resume::Plan, PipelineError> {
        resume::plan(&self.out_dir, self.names, entries, fingerprint, overwrite)
    }

    /// Everything that decides the values this run writes.
    fn fingerprint(
        &self,
        models: &ResolvedModels,
        opts: &RunOptions,
    ) -> Result<Fingerprint, PipelineError> {
        Ok(Fingerprint {
            pipeline: self.pipeline.source.clone(),
            dtype: opts.precision.to_string(),
            models: self
                .pipeline
                .tasks
                .iter()
                .zip(&models.task_model)
                .map(|(t, &m)| {
                    let model = &models.models[m];
                    model_stamp(&t.name, &model.reference, &model.files)
                })
                .collect::<Result<_, _>>()?,
            inputs: self
                .all_files
                .iter()
                .map(FileStamp::of_input)
                .collect::<Result<_, _>>()?,
        })
    }

    /// What the plan says, one line per decision, for `mbpipe validate`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![format!(
            "ok: input `{}`: {} file(s){}, text from {:?}",
            self.pipeline.input.path,
            self.all_files.len(),
            match self.names.shard {
                Some((i, n)) => format!(" ({} in shard {i}/{n})", self.files.len()),
                None => String::new(),
            },
            self.pipeline.input.text.fields()
        )];
        let columns: Vec<String> = self
            .row_schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        out.push(format!("ok: input columns: {}", columns.join(", ")));
        if let Some(note) = &self.stale_lock {
            out.push(format!("note: {note}"));
        }
        out.push(format!(
            "ok: output {}: {}",
            self.out_dir,
            match &self.work {
                Work::Complete { .. } => format!(
                    "complete ({} exists); a run does nothing without --overwrite",
                    self.names.success()
                ),
                Work::Run { resumed, .. } => match resumed.position() {
                    Some((input, row)) => format!(
                        "resumes after {} committed part file(s), from {input} row {row}",
                        resumed.parts.len()
                    ),
                    None if self.entries.is_empty() => "a new output".into(),
                    None => "starts over (this run's own files are replaced)".into(),
                },
                Work::Unfetched { .. } => "not checked (a model could not be fetched)".into(),
            }
        ));
        out
    }
}

/// Inputs that are all empty JSON lines files have no columns at all; an empty input is a
/// successful run with zero rows, so give it the text columns (as strings) it would have had.
fn with_text_columns_if_empty(schema: SchemaRef, pipeline: &Pipeline) -> SchemaRef {
    if !schema.fields().is_empty() {
        return schema;
    }
    let fields: Vec<Field> = pipeline
        .input
        .text
        .fields()
        .iter()
        .map(|name| Field::new(name.to_string(), DataType::Utf8, true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// A task's model files, for the resume fingerprint.
fn model_stamp(
    task: &str,
    model: &ModelRef,
    files: &ModelFiles,
) -> Result<ModelStamp, PipelineError> {
    let paths = [&files.config, &files.tokenizer]
        .into_iter()
        .chain(&files.weights);
    Ok(ModelStamp {
        task: task.to_string(),
        model: model.to_string(),
        revision: files.revision.clone(),
        files: paths.map(|p| FileStamp::of(p)).collect::<Result<_, _>>()?,
    })
}
