//! Entry points for the `run` and `validate` commands.

use std::path::Path;

use crate::error::PipelineError;
use crate::runner::{RunOptions, RunOutcome};
use crate::validate::Pipeline;

/// `mbpipe run`.
pub fn run(opts: RunOptions) -> Result<RunOutcome, PipelineError> {
    crate::runner::run(opts)
}

/// `mbpipe validate`: checks everything `run` with the same options would check before its first
/// row (the plan, then every model that can be reached: local directories, or Hub models already
/// in the cache or downloadable); prints what it checked. Changes nothing.
pub fn validate(opts: &RunOptions) -> Result<(), PipelineError> {
    let report = crate::check::check(opts)?;
    for line in &report {
        println!("{line}");
    }
    Ok(())
}

/// Convenience for callers that only need the static checks.
pub fn load(path: &Path) -> Result<Pipeline, PipelineError> {
    Pipeline::load(path)
}
