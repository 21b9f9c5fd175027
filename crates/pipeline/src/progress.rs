//! Progress: a bar on a terminal, a log line every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Input rows to read in all, once known (`u64::MAX` until then).
pub type TotalRows = Arc<AtomicU64>;

use indicatif::{ProgressBar, ProgressStyle};

/// Run progress shown to the user.
pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    last_log: Instant,
    rows: u64,
    input_rows: u64,
    total: TotalRows,
    tokens: u64,
    rejected: u64,
}

impl Progress {
    /// A spinner with rows, tokens/s and, once `total` is known, percent done and ETA on a
    /// terminal; plain log lines otherwise.
    pub fn new(total: TotalRows) -> Self {
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
            input_rows: 0,
            total,
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
        let total = self.total.load(Ordering::Relaxed);
        if total != u64::MAX && total > 0 {
            let done = (self.input_rows + self.rejected).min(total);
            m.push_str(&format!(", {:.1}%", 100.0 * done as f64 / total as f64));
            if done > 0 {
                let left = secs * (total - done) as f64 / done as f64;
                m.push_str(&format!(", ETA {}", format_duration(left)));
            }
        }
        m
    }

    /// Counts a finished window: output rows, input rows it covered, real tokens.
    pub fn advance(&mut self, rows: u64, input_rows: u64, tokens: u64) {
        self.input_rows += input_rows;
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

/// `1h02m`, `3m05s`, `42s`.
fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_appears_once_the_total_is_known() {
        let total: TotalRows = Arc::new(AtomicU64::new(u64::MAX));
        let mut p = Progress::new(total.clone());
        p.advance(10, 10, 100);
        assert!(!p.message().contains("ETA"), "{}", p.message());
        total.store(40, Ordering::Relaxed);
        let m = p.message();
        assert!(m.contains("25.0%") && m.contains("ETA"), "{m}");
        assert_eq!(format_duration(3725.0), "1h02m");
        assert_eq!(format_duration(185.0), "3m05s");
        assert_eq!(format_duration(42.4), "42s");
    }
}
