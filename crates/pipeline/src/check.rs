//! `mbpipe validate`: the run's plan, built and checked exactly as `mbpipe run` builds it (same
//! flags), then the models loaded on the first device at `--dtype` and the tasks bound to them,
//! as a run does before its first row. Reads only; changes nothing.

use crate::engine::LoadedModel;
use crate::enrich::{bind_tasks, row_shape};
use crate::error::PipelineError;
use crate::plan::{Purpose, RunPlan, Work};
use crate::runner::RunOptions;

/// Checks everything a run with `opts` would check before its first row; returns one line per
/// thing checked. Hub models that cannot be fetched (offline, not cached) are reported as
/// unchecked rather than failing.
pub fn check(opts: &RunOptions) -> Result<Vec<String>, PipelineError> {
    let mut plan = RunPlan::build(opts, Purpose::Validate)?;
    let mut report = vec![format!(
        "ok: {} parses ({} tasks)",
        opts.pipeline.display(),
        plan.pipeline.tasks.len()
    )];
    report.extend(plan.describe());
    let Some(models) = plan.work.models() else {
        if let Work::Unfetched { reason } = &plan.work {
            report.push(format!("unchecked: {reason}"));
        }
        for t in &plan.pipeline.tasks {
            report.push(format!("ok: task `{}` settings (model not loaded)", t.name));
        }
        return Ok(report);
    };
    let device = opts
        .devices
        .first()
        .ok_or_else(|| PipelineError::Invalid("no device to run the models on".into()))?;
    let dev = device.open()?;
    let loaded: Vec<LoadedModel> = (0..models.models.len())
        .map(|m| models.load(m, &dev, opts.precision))
        .collect::<Result<_, _>>()?;
    let bound = bind_tasks(&plan.pipeline, models, &loaded)?;
    let shape = row_shape(
        &plan.pipeline,
        &bound.tasks,
        &bound.tokenizers,
        plan.query.take(),
        &plan.row_schema,
    )?;
    for (t, &m) in plan.pipeline.tasks.iter().zip(&models.task_model) {
        report.push(format!(
            "ok: task `{}` on `{}` ({device}, {}; {})",
            t.name,
            models.models[m].reference,
            models.models[m].precision(opts.precision),
            loaded[m].model.kernels()
        ));
    }
    let columns: Vec<String> = shape
        .output_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    report.push(format!("ok: output columns: {}", columns.join(", ")));
    Ok(report)
}
