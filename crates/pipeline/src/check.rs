//! `mbpipe validate`: everything a run would check before reading the first row.

use std::path::Path;

use mbpipe_io::{expand_inputs, unified_schema};
use mbpipe_model::{DeviceSpec, ModelError, ModelFiles, ModelRef, Precision};

use crate::engine::LoadedModel;
use crate::error::PipelineError;
use crate::query::InputQuery;
use crate::rows::check_text_columns;
use crate::tasks::BoundTask;
use crate::validate::Pipeline;

/// Checks a pipeline file; returns one line per thing checked. Hub models that cannot be
/// fetched (offline, not cached) are reported as unchecked rather than failing.
pub fn check(path: &Path) -> Result<Vec<String>, PipelineError> {
    let pipeline = Pipeline::load(path)?;
    let mut report = vec![format!(
        "ok: {} parses ({} tasks)",
        path.display(),
        pipeline.tasks.len()
    )];
    let files = expand_inputs(&pipeline.input.path)?;
    let schema = unified_schema(&files)?;
    let schema = match &pipeline.input.query {
        Some(q) => InputQuery::new(q, schema)?.output_schema(),
        None => schema,
    };
    check_text_columns(&pipeline.input.text, &schema)?;
    report.push(format!(
        "ok: input `{}`: {} file(s), text from {:?}",
        pipeline.input.path,
        files.len(),
        pipeline.input.text.fields()
    ));
    let device = DeviceSpec::Cpu.open()?;
    let mut checked: Vec<(String, Option<LoadedModel>)> = Vec::new();
    for task in &pipeline.tasks {
        let key = task.model.to_string();
        if !checked.iter().any(|(k, _)| *k == key) {
            let loaded = match ModelFiles::resolve(&task.model) {
                Ok(files) => Some(LoadedModel::load_files(
                    task.model.clone(),
                    files,
                    &device,
                    Precision::F32,
                )?),
                Err(ModelError::Hub { reason, .. })
                    if matches!(task.model, ModelRef::Hub { .. }) =>
                {
                    report.push(format!(
                        "unchecked: model `{key}` could not be fetched from the Hub ({reason})"
                    ));
                    None
                }
                Err(e) => return Err(e.into()),
            };
            checked.push((key.clone(), loaded));
        }
        let (_, loaded) = checked
            .iter()
            .find(|(k, _)| *k == key)
            .expect("inserted above, this is a bug");
        if let Some(m) = loaded {
            BoundTask::bind(task, 0, m)?;
            report.push(format!("ok: task `{}` on `{key}`", task.name));
        } else {
            report.push(format!(
                "ok: task `{}` settings (model not loaded)",
                task.name
            ));
        }
    }
    Ok(report)
}
