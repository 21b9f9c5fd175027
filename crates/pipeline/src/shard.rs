//! `--shard I/N`: which shard this process is; `mbpipe_io::shard_files` does the split.

use crate::error::PipelineError;

/// Parses `I/N` (0-based) or `auto/N` (I from JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID).
pub fn parse(spec: Option<&str>) -> Result<Option<(usize, usize)>, PipelineError> {
    let Some(spec) = spec else { return Ok(None) };
    let bad = |why: String| PipelineError::Invalid(format!("--shard `{spec}`: {why}"));
    let (i, n) = spec
        .split_once('/')
        .ok_or_else(|| bad("expected I/N, e.g. 0/4, or auto/N".into()))?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| bad(format!("`{n}` is not a number of shards")))?;
    if n == 0 {
        return Err(bad("the number of shards must be at least 1".into()));
    }
    let i: usize = if i.trim() == "auto" {
        let (var, value) = ["JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"]
            .iter()
            .find_map(|v| std::env::var(v).ok().map(|x| (*v, x)))
            .ok_or_else(|| bad("auto needs JOB_COMPLETION_INDEX (Kubernetes) or SLURM_ARRAY_TASK_ID (Slurm) to be set".into()))?;
        value
            .trim()
            .parse()
            .map_err(|_| bad(format!("{var}=`{value}` is not a number")))?
    } else {
        i.trim()
            .parse()
            .map_err(|_| bad(format!("`{i}` is not a shard index")))?
    };
    if i >= n {
        return Err(bad(format!(
            "shard index {i} must be below {n} (indices are 0-based)"
        )));
    }
    Ok(Some((i, n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_explicit_shards() {
        assert_eq!(parse(Some("1/4")).unwrap(), Some((1, 4)));
        assert!(parse(Some("4/4"))
            .unwrap_err()
            .to_string()
            .contains("below 4"));
        assert!(parse(Some("x")).is_err());
        assert_eq!(parse(None).unwrap(), None);
    }
}
