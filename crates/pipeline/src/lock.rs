//! One run at a time per output folder (per shard): a lock file naming its holder.
//!
//! The lock (`_lock`, per shard `_lock.shard-I-of-N`) is created exclusively and holds the pid,
//! host and start time of the run. A second run is refused at once, naming the holder. A stale
//! lock is taken over with a message: on the same host when its process is gone; from another
//! host (shared storage, where the process cannot be checked) when it was not refreshed for
//! [`STALE_AFTER`]; a running holder refreshes it every [`REFRESH_EVERY`].

use std::fs::File;
use std::path::Path;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use mbpipe_io::OutputDir;

use crate::error::PipelineError;

/// A lock from another host that was not refreshed for this long is taken over.
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);
/// How often a running holder refreshes its lock's modification time.
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// A lock file still empty after this long was left by a crash while being created.
const EMPTY_GRACE: Duration = Duration::from_secs(10);

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// Start time, seconds since the Unix epoch.
    pub started: u64,
    /// The process's start time in clock ticks since boot (Linux), so that a reused pid is not
    /// taken for the holder.
    #[serde(default)]
    pub process_start: Option<u64>,
}

impl Holder {
    fn me() -> Self {
        let pid = std::process::id();
        Holder {
            pid,
            host: host_name(),
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            process_start: process_start(pid),
        }
    }

    fn describe(&self) -> String {
        format!(
            "pid {} on host {}, started {}",
            self.pid,
            self.host,
            format_utc(self.started)
        )
    }
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct OutputLock {
    dir: OutputDir,
    name: String,
    me: Holder,
    stop: Option<Sender<()>>,
    refresher: Option<JoinHandle<()>>,
}

/// Takes the lock `dir/name`, taking over a stale one (with a message), or fails naming the
/// folder and the holder. In a bucket the lock is a lease: created with the store's
/// create-if-absent put, refreshed by the holder, taken over when stale as on a local disk.
pub fn acquire(dir: &OutputDir, name: &str) -> Result<OutputLock, PipelineError> {
    let me = Holder::me();
    let text = serde_json::to_string(&me)?;
    let path = dir.show(name);
    // A takeover that loses a race to another taker tries again; three rounds are plenty.
    for _ in 0..3 {
        if dir.create_new(name, text.as_bytes())? {
            return Ok(OutputLock::hold(dir.clone(), name, me, text));
        }
        let Some(Existing { raw, holder, stale }) = existing(dir, name, &me)? else {
            continue; // released meanwhile
        };
        let Some(reason) = stale else {
            return Err(in_use(dir, &path, holder.as_ref()));
        };
        eprintln!(
            "mbpipe: taking over the stale lock {path} ({}): {reason}",
            holder.map_or("unreadable".to_string(), |h| h.describe())
        );
        take_over(dir, name, &raw, me.pid)?;
    }
    Err(PipelineError::Locked(format!(
        "cannot take the lock {path}: other runs keep taking it"
    )))
}

/// A lock file found in place, and whether it is stale (why) for a run by `me`.
struct Existing {
    raw: String,
    holder: Option<Holder>,
    stale: Option<String>,
}

/// The lock `dir/name` as it is now (`None` when there is none), judged stale or held.
fn existing(dir: &OutputDir, name: &str, me: &Holder) -> Result<Option<Existing>, PipelineError> {
    let Some((raw, age)) = read_lock(dir, name)? else {
        return Ok(None);
    };
    let holder = serde_json::from_str::<Holder>(&raw).ok();
    let stale = match &holder {
        Some(h) => stale_reason(h, me, age),
        None if age >= EMPTY_GRACE => Some("its file is empty or damaged".to_string()),
        None => None,
    };
    Ok(Some(Existing { raw, holder, stale }))
}

/// The error of a run that finds `dir` held by `holder` (`None`: a run that is starting).
fn in_use(dir: &OutputDir, path: &str, holder: Option<&Holder>) -> PipelineError {
    let who = holder.map_or("a run that is starting".to_string(), |h| h.describe());
    PipelineError::Locked(format!(
        "output folder {dir} is in use by another mbpipe run ({who}; lock file {path}). \
         Wait for it to finish or stop it; a lock whose process is gone is taken over \
         automatically (from another host, after {} minutes without a refresh)",
        STALE_AFTER.as_secs() / 60
    ))
}

/// Checks, reading only, that a run could take the lock `dir/name` now: the error a run would
/// get when a live run holds it; a line saying it would be taken over when it is stale.
pub fn check_free(dir: &OutputDir, name: &str) -> Result<Option<String>, PipelineError> {
    let Some(found) = existing(dir, name, &Holder::me())? else {
        return Ok(None);
    };
    match found.stale {
        None => Err(in_use(dir, &dir.show(name), found.holder.as_ref())),
        Some(reason) => Ok(Some(format!(
            "the stale lock {} would be taken over: {reason}",
            dir.show(name)
        ))),
    }
}

/// The lock's text and age, or `None` when it is gone.
fn read_lock(dir: &OutputDir, name: &str) -> Result<Option<(String, Duration)>, PipelineError> {
    let Some(raw) = dir.read_string(name)? else {
        return Ok(None);
    };
    let age = Duration::from_secs(dir.age_seconds(name)?.unwrap_or(0));
    Ok(Some((raw, age)))
}

/// Why `holder`'s lock is stale, or `None` while it may still be running.
fn stale_reason(holder: &Holder, me: &Holder, age: Duration) -> Option<String> {
    if holder.host == me.host && holder.host != UNKNOWN_HOST {
        if holder.pid == me.pid {
            // Not us (we hold no lock yet): a restarted container that got the same pid.
            return Some(format!("process {} is this one, restarted", holder.pid));
        }
        if let Some(alive) = process_alive(holder) {
            return (!alive).then(|| format!("process {} is gone", holder.pid));
        }
    }
    (age >= STALE_AFTER).then(|| {
        format!(
            "not refreshed for {} minutes (a running holder refreshes it every minute)",
            age.as_secs() / 60
        )
    })
}

/// Removes the stale lock whose text is `raw`, unless another run replaced it meanwhile. On a
/// local disk the file is first renamed away (only one taker can), then checked; a bucket has
/// no rename, so the lease is read again just before it is deleted (a narrow race between two
/// takers of the same stale lease remains; see the README).
fn take_over(dir: &OutputDir, name: &str, raw: &str, pid: u32) -> Result<(), PipelineError> {
    let Some(local) = dir.local() else {
        if dir.read_string(name)?.is_some_and(|now| now == raw) {
            dir.remove(name)?;
        }
        return Ok(());
    };
    let path = local.join(name);
    let aside = local.join(format!(".{name}.stale-{pid}.tmp"));
    if std::fs::rename(&path, &aside).is_err() {
        return Ok(()); // another taker was first; the next round sees its lock
    }
    let same = std::fs::read_to_string(&aside).is_ok_and(|now| now == raw);
    if !same {
        // A fresh lock of another run: put it back (a link fails if a third run holds it now).
        let _ = std::fs::hard_link(&aside, &path);
    }
    std::fs::remove_file(&aside).map_err(|e| PipelineError::file("remove", aside.display(), e))
}

impl OutputLock {
    fn hold(dir: OutputDir, name: &str, me: Holder, text: String) -> Self {
        let (stop, stopped) = channel::<()>();
        let (refresh_dir, refresh_name) = (dir.clone(), name.to_string());
        let refresher = std::thread::Builder::new()
            .name("mbpipe-lock".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(REFRESH_EVERY) {
                    refresh(&refresh_dir, &refresh_name, &text);
                }
            })
            .ok();
        OutputLock {
            dir,
            name: name.to_string(),
            me,
            stop: Some(stop),
            refresher,
        }
    }

    /// Whether the lock still names this run (a run that took it over keeps its own).
    fn ours(&self) -> bool {
        self.dir
            .read_string(&self.name)
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str::<Holder>(&t).ok())
            .is_some_and(|h| h == self.me)
    }
}

/// Renews the lock's modification time, which tells other hosts that its holder is alive.
fn refresh(dir: &OutputDir, name: &str, text: &str) {
    match dir.local() {
        Some(local) => {
            let _ = File::options()
                .write(true)
                .open(local.join(name))
                .and_then(|f| f.set_modified(SystemTime::now()));
        }
        // An object's time changes only when it is written again; only while it is still ours.
        None => {
            if dir.read_string(name).ok().flatten().as_deref() == Some(text) {
                let _ = dir.write_atomic(name, text.as_bytes());
            }
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        if self.ours() {
            let _ = self.dir.remove(&self.name);
        }
    }
}

const UNKNOWN_HOST: &str = "unknown";

/// This machine's host name (the kernel's, else `$HOSTNAME`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| UNKNOWN_HOST.to_string())
}

/// Whether the holder's process still runs: `None` where that cannot be told (no /proc).
fn process_alive(holder: &Holder) -> Option<bool> {
    if !Path::new("/proc/self/stat").exists() {
        return None;
    }
    let Some(start) = process_start(holder.pid) else {
        return Some(false);
    };
    // Same pid but a later start: the pid was reused by another process.
    Some(holder.process_start.is_none_or(|s| s == start))
}

/// A process's start time in clock ticks since boot, from /proc (Linux).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; starttime is 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `2026-12-02 01:23:45 UTC`.
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_796_173_425), "2026-12-02 01:03:45 UTC");
    }

    #[cfg(unix)]
    #[test]
    fn a_live_holder_is_refused_and_a_lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = acquire(&OutputDir::Local(dir.path().to_path_buf()), "_lock").unwrap();
        let held: Holder =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("_lock")).unwrap())
                .unwrap();
        assert_eq!(held.pid, std::process::id());
        drop(lock);
        assert!(!dir.path().join("_lock").exists());

        // Held by a live process of this host (the test's parent): refused, naming it.
        if process_alive(&held).is_some() {
            let parent = std::os::unix::process::parent_id();
            let holder = Holder {
                pid: parent,
                process_start: process_start(parent),
                ..held
            };
            let text = serde_json::to_string(&holder).unwrap();
            std::fs::write(dir.path().join("_lock"), &text).unwrap();
            let err = acquire(&OutputDir::Local(dir.path().to_path_buf()), "_lock")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("is in use by another mbpipe run")
                    && err.contains(&format!("pid {parent} on host {}", holder.host)),
                "{err}"
            );
            assert_eq!(
                std::fs::read_to_string(dir.path().join("_lock")).unwrap(),
                text
            );
        }
    }

    #[test]
    fn stale_locks_are_recognised() {
        let me = Holder::me();
        let gone = Holder {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        if Path::new("/proc/self/stat").exists() {
            let why = stale_reason(&gone, &me, Duration::ZERO).unwrap();
            assert!(why.contains("is gone"), "{why}");
            let mut reused = me.clone();
            reused.pid = std::process::id();
            reused.process_start = reused.process_start.map(|s| s + 1);
            let other = Holder {
                pid: 1,
                ..me.clone()
            };
            assert!(stale_reason(&reused, &other, Duration::ZERO).is_some());
        }
        let remote = Holder {
            host: "elsewhere.example".into(),
            ..me.clone()
        };
        assert_eq!(stale_reason(&remote, &me, Duration::from_secs(60)), None);
        let why = stale_reason(&remote, &me, STALE_AFTER).unwrap();
        assert!(why.contains("not refreshed for 15 minutes"), "{why}");
    }
}
