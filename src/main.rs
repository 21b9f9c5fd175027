//! `mbpipe`: batch ModernBERT inference over Parquet and JSON-lines corpora.

mod args;
mod quick;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// Exit code for invalid usage, pipeline or model configuration (clap uses 2 for usage too).
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.command);
    let result = match cli.command {
        Command::FillMask(a) => quick::fill_mask(a),
        Command::Classify(a) => quick::classify(a),
        Command::Embed(a) => quick::embed(a),
        Command::Run(a) => mbpipe_pipeline::cli::run(a.into_options())
            .map(|o| o.exit_code())
            .map_err(anyhow::Error::from),
        Command::Validate(a) => mbpipe_pipeline::cli::validate(&a.run.into_options())
            .map(|_| 0)
            .map_err(anyhow::Error::from),
        Command::Sql(a) => run_sql(a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            let invalid = err
                .downcast_ref::<mbpipe_pipeline::PipelineError>()
                .is_some_and(|e| e.is_invalid_configuration())
                || err.downcast_ref::<quick::UsageError>().is_some()
                || err
                    .downcast_ref::<mbpipe_model::ModelError>()
                    .is_some_and(|e| e.is_configuration_error())
                || err
                    .downcast_ref::<mbpipe_io::IoError>()
                    .is_some_and(|e| e.is_input_spec_error());
            ExitCode::from(if invalid { EXIT_INVALID } else { 1 })
        }
    }
}

fn init_logging(command: &Command) {
    let default = if matches!(command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn run_sql(a: args::SqlArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for warning in mbpipe_sql::incomplete_outputs(&a.tables) {
        eprintln!("warning: {warning}");
    }
    let mut out = std::io::stdout().lock();
    runtime.block_on(mbpipe_sql::run_query(
        &a.tables, &a.query, a.format, &mut out,
    ))?;
    Ok(0)
}
