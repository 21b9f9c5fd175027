//! Progress: a bar on a terminal, a log line every few seconds otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Run progress shown to the user.
pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    last_log: Instant,
    rows: u64,
    tokens: u64,
    rejected: u64,
}

impl Progress {
    /// A spinner with rows and tokens/s on a terminal; plain log lines otherwise.
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            start: Instant::now(),
            last_log: Instant::now(),
            rows: 0,
            tokens: 0,
            rejected: 0,
        }
    }

    fn message(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let mut m = format!(
            "{} rows, {} tokens, {:.0} tokens/s",
            self.rows,
            self.tokens,
            self.tokens as f64 / secs
        );
        if self.rejected > 0 {
            m.push_str(&format!(", {} rejected", self.rejected));
        }
        m
    }

    /// Counts a finished window.
    pub fn advance(&mut self, rows: u64, tokens: u64) {
        self.rows += rows;
        self.tokens += tokens;
        self.update();
    }

    /// Counts rejected rows.
    pub fn rejected(&mut self, n: u64) {
        self.rejected += n;
        self.update();
    }

    fn update(&mut self) {
        match &self.bar {
            Some(bar) => bar.set_message(self.message()),
            None if self.last_log.elapsed() >= Duration::from_secs(10) => {
                self.last_log = Instant::now();
                tracing::info!("{}", self.message());
            }
            None => {}
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
