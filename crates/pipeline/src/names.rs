//! The names of an output folder's files: this run's own, and, for any name found in a folder,
//! which layout (unsharded or shard I of N) wrote it, or that mbpipe did not write it at all.

use mbpipe_io::OutputFormat;

/// Names of one run's files in the output directory: plain, or with a shard suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputNames {
    /// `(I, N)` for `--shard I/N`.
    pub shard: Option<(usize, usize)>,
}

impl OutputNames {
    fn suffix(&self) -> String {
        self.shard
            .map_or(String::new(), |(i, n)| format!(".shard-{i}-of-{n}"))
    }

    /// The journal of committed parts.
    pub fn journal(&self) -> String {
        format!("_progress{}.jsonl", self.suffix())
    }

    /// The rejected-rows log (shards keep their own, so concurrent shards never share a file).
    pub fn rejects(&self) -> String {
        format!("_rejects{}.jsonl", self.suffix())
    }

    /// The manifest.
    pub fn manifest(&self) -> String {
        format!("_manifest{}.json", self.suffix())
    }

    /// The success marker.
    pub fn success(&self) -> String {
        format!("_SUCCESS{}", self.suffix())
    }

    /// The lock a running run holds (shards lock separately: they run at the same time).
    pub fn lock(&self) -> String {
        format!("_lock{}", self.suffix())
    }

    /// This run's `_`-prefixed files.
    pub fn own_metadata(&self) -> [String; 4] {
        [
            self.journal(),
            self.rejects(),
            self.manifest(),
            self.success(),
        ]
    }

    /// The name prefix of this run's part files.
    fn part_prefix(&self) -> String {
        match self.shard {
            None => "part-".to_string(),
            Some((i, _)) => format!("part-{i:05}-"),
        }
    }

    /// Part `seq` of this run: `part-00007.parquet`, or `part-00002-00007.parquet` for shard 2,
    /// so that the parts of all shards sort by name into input order.
    pub fn part(&self, seq: u64, format: OutputFormat) -> String {
        format!("{}{seq:05}.{}", self.part_prefix(), format.extension())
    }

    /// The sequence number of `name` when it is one of this run's finished part files.
    pub fn part_seq(&self, name: &str) -> Option<u64> {
        let rest = name.strip_prefix(&self.part_prefix())?;
        let (seq, ext) = rest.split_once('.')?;
        let known =
            ext == OutputFormat::Parquet.extension() || ext == OutputFormat::ArrowIpc.extension();
        (known && is_number(seq)).then(|| seq.parse().ok())?
    }

    /// Whether `name` is one of this run's part files, finished (`part-…`) or not (`.part-….tmp`).
    pub fn owns_part(&self, name: &str) -> bool {
        self.part_seq(temp_target(name).unwrap_or(name)).is_some()
    }

    /// Whether `name` is a temporary file of this run (`.NAME.tmp` of a part or of one of its
    /// `_` files, or a lock being taken over).
    pub fn owns_temp(&self, name: &str) -> bool {
        temp_target(name).is_some_and(|t| {
            self.part_seq(t).is_some()
                || self.own_metadata().iter().any(|m| m == t)
                || t.strip_prefix(&self.lock())
                    .and_then(|r| r.strip_prefix(".stale-"))
                    .is_some_and(is_number)
        })
    }

    /// Whether a file that `claim` describes belongs to this run's layout: the same sharding.
    pub fn same_layout(&self, claim: Claim) -> bool {
        match (self.shard, claim) {
            (None, Claim::Unsharded) => true,
            (Some((_, n)), Claim::Shard { index, count }) => count.map_or(index < n, |c| c == n),
            _ => false,
        }
    }

    /// How this run's layout is described in messages.
    pub fn describe(&self) -> String {
        match self.shard {
            None => "an unsharded run".into(),
            Some((i, n)) => format!("shard {i}/{n}"),
        }
    }
}

/// Which layout wrote a file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// An unsharded run's file.
    Unsharded,
    /// Shard `index` of `count` shards (`count` is unknown for a part file, whose name holds
    /// only the index).
    Shard {
        /// I of `--shard I/N`.
        index: usize,
        /// N, where the name says it.
        count: Option<usize>,
    },
}

impl Claim {
    /// How the layout is described in messages.
    pub fn describe(self) -> String {
        match self {
            Claim::Unsharded => "an unsharded run".into(),
            Claim::Shard { count: Some(n), .. } => format!("a run in {n} shards"),
            Claim::Shard { index, .. } => format!("a sharded run (shard {index})"),
        }
    }
}

/// Who wrote `name`, or `None` when it is not a name mbpipe writes (a foreign file).
pub fn claim(name: &str) -> Option<Claim> {
    let name = temp_target(name).unwrap_or(name);
    if let Some(rest) = name.strip_prefix("part-") {
        let (stem, ext) = rest.split_once('.')?;
        if ext != OutputFormat::Parquet.extension() && ext != OutputFormat::ArrowIpc.extension() {
            return None;
        }
        return match stem.split_once('-') {
            None => is_number(stem).then_some(Claim::Unsharded),
            Some((i, seq)) if is_number(i) && is_number(seq) => Some(Claim::Shard {
                index: i.parse().ok()?,
                count: None,
            }),
            Some(_) => None,
        };
    }
    for (base, ext) in [
        ("_progress", ".jsonl"),
        ("_rejects", ".jsonl"),
        ("_manifest", ".json"),
        ("_SUCCESS", ""),
        ("_lock", ""),
    ] {
        let Some(rest) = name.strip_prefix(base) else {
            continue;
        };
        // A lock being taken over: `_lock.stale-PID` (as `._lock.stale-PID.tmp`).
        let rest = match rest.rsplit_once(".stale-") {
            Some((r, pid)) if base == "_lock" && is_number(pid) => r,
            _ => rest,
        };
        let Some(suffix) = rest.strip_suffix(ext) else {
            continue;
        };
        if suffix.is_empty() {
            return Some(Claim::Unsharded);
        }
        let (i, n) = suffix.strip_prefix(".shard-")?.split_once("-of-")?;
        if is_number(i) && is_number(n) {
            return Some(Claim::Shard {
                index: i.parse().ok()?,
                count: Some(n.parse().ok()?),
            });
        }
        return None;
    }
    None
}

/// `NAME` for a temp file `.NAME.tmp`.
fn temp_target(name: &str) -> Option<&str> {
    name.strip_prefix('.')?.strip_suffix(".tmp")
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_sort_across_shards_and_are_recognised() {
        let plain = OutputNames { shard: None };
        let s2 = OutputNames {
            shard: Some((2, 10)),
        };
        let s10 = OutputNames {
            shard: Some((10, 11)),
        };
        assert_eq!(plain.part(7, OutputFormat::Parquet), "part-00007.parquet");
        assert_eq!(s2.part(7, OutputFormat::ArrowIpc), "part-00002-00007.arrow");
        assert!(s2.part(99, OutputFormat::Parquet) < s10.part(0, OutputFormat::Parquet));
        assert!(plain.owns_part("part-00007.parquet"));
        assert!(plain.owns_part(".part-00007.parquet.tmp"));
        assert!(!plain.owns_part("part-00002-00007.parquet"));
        assert!(s2.owns_part("part-00002-00007.parquet"));
        assert!(!s2.owns_part("part-00003-00007.parquet"));
        assert!(!plain.owns_part("_manifest.json"));
        assert_eq!(s2.journal(), "_progress.shard-2-of-10.jsonl");
        assert_eq!(s2.part_seq("part-00002-00007.arrow"), Some(7));
        assert_eq!(plain.part_seq("part-00007.csv"), None);
        assert!(s2.owns_temp("._manifest.shard-2-of-10.json.tmp"));
        assert!(s2.owns_temp("._lock.shard-2-of-10.stale-42.tmp"));
        assert!(!s2.owns_temp("._manifest.json.tmp"));
    }

    #[test]
    fn every_name_mbpipe_writes_is_claimed_and_nothing_else() {
        let s = |index, count| Some(Claim::Shard { index, count });
        for (name, want) in [
            ("part-00000.parquet", Some(Claim::Unsharded)),
            ("part-123456.arrow", Some(Claim::Unsharded)),
            (".part-00001.parquet.tmp", Some(Claim::Unsharded)),
            ("_manifest.json", Some(Claim::Unsharded)),
            ("._manifest.json.tmp", Some(Claim::Unsharded)),
            ("_SUCCESS", Some(Claim::Unsharded)),
            ("_progress.jsonl", Some(Claim::Unsharded)),
            ("_rejects.jsonl", Some(Claim::Unsharded)),
            ("_lock", Some(Claim::Unsharded)),
            ("._lock.stale-77.tmp", Some(Claim::Unsharded)),
            ("part-00001-00000.parquet", s(1, None)),
            ("_SUCCESS.shard-1-of-3", s(1, Some(3))),
            ("_manifest.shard-0-of-2.json", s(0, Some(2))),
            ("_lock.shard-2-of-4", s(2, Some(4))),
            ("notes.txt", None),
            ("part-0001.csv", None),
            ("part-x.parquet", None),
            ("_manifest.shard-1.json", None),
            ("_SUCCESS.bak", None),
            ("_other", None),
            (".DS_Store", None),
        ] {
            assert_eq!(claim(name), want, "{name}");
        }
        let plain = OutputNames { shard: None };
        let s1of3 = OutputNames {
            shard: Some((1, 3)),
        };
        assert!(plain.same_layout(Claim::Unsharded));
        assert!(!plain.same_layout(Claim::Shard {
            index: 0,
            count: None
        }));
        assert!(s1of3.same_layout(Claim::Shard {
            index: 2,
            count: None
        }));
        assert!(!s1of3.same_layout(Claim::Shard {
            index: 3,
            count: None
        }));
        assert!(!s1of3.same_layout(Claim::Shard {
            index: 1,
            count: Some(2)
        }));
        assert!(!s1of3.same_layout(Claim::Unsharded));
    }
}
