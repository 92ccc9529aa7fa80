//! Compaction: rewriting a mostly dead journal with only its live
//! messages, through a temp file of its own.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Journal;
use super::file::sync_dir;
use super::format::{BASE, MAGIC, MSG, MSG_TTL, RUN, parse, record};

/// Rewrite the file when it is at least this large and mostly dead.
pub(super) const COMPACT_AT: u64 = 1 << 20;

impl Journal {
    /// At close: shrink the file to its header if nothing is left to send.
    pub(crate) fn compact_if_empty(&mut self) {
        if self.live.is_empty()
            && self.len > 4096
            && let Err(e) = self.compact()
        {
            log::warn!("longlink: journal: compaction at close failed: {e}");
        }
    }

    pub(super) fn maybe_compact(&mut self) {
        let floor = self.compact_at.max(self.retry_at);
        if self.len < floor || self.len < 2 * self.live_bytes + MAGIC.len() as u64 {
            return;
        }
        match self.compact() {
            Ok(()) => self.retry_at = 0,
            Err(e) => {
                log::warn!("longlink: journal: compaction failed (will retry): {e}");
                // Try again only after it has grown as much again.
                self.retry_at = self.len.saturating_mul(2);
            }
        }
    }

    /// Rewrite the file with only the live messages and the id counter.
    pub(super) fn compact(&mut self) -> io::Result<()> {
        let mut old = Vec::new();
        let mut f = File::open(&self.path)?;
        f.read_to_end(&mut old)?;
        let (records, _, _) = parse(&old);
        let mut out = Vec::with_capacity(self.live_bytes as usize + 64);
        out.extend_from_slice(MAGIC);
        if self.last_id > 0 {
            out.extend_from_slice(&record(BASE, self.last_id, &[]));
        }
        out.extend_from_slice(&record(RUN, self.run, &[]));
        for r in records {
            if matches!(r.kind, MSG | MSG_TTL) && self.live.contains_key(&r.id) {
                out.extend_from_slice(&record(r.kind, r.id, r.payload));
            }
        }
        let (tmp, mut t) = create_temp(&self.path)?;
        let written = (|| {
            t.try_lock().map_err(|e| match e {
                std::fs::TryLockError::WouldBlock => {
                    io::Error::new(io::ErrorKind::WouldBlock, "the new temp file is locked")
                }
                std::fs::TryLockError::Error(e) => e,
            })?;
            t.write_all(&out)?;
            #[cfg(test)]
            if self.fail_sync {
                return Err(io::Error::other("injected fsync failure"));
            }
            t.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            // Ours alone (created here, under a name no other journal or
            // process uses): nothing else can lose by its removal.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.path);
        self.file = t;
        self.len = out.len() as u64;
        self.dirty = false;
        log::debug!(
            "longlink: journal compacted to {} bytes ({} live messages)",
            self.len,
            self.live.len()
        );
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn set_compact_at(&mut self, n: u64) {
        self.compact_at = n;
    }
}

/// Creates (never opens an existing file) a temp file beside `path`, named
/// after the whole file name, this process and a counter:
/// `<file name>.<pid>.<n>.compacting`. Two journals in one directory, or
/// two processes, never share one, whatever the journals are called.
fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the journal path has no file name",
        )
    })?;
    let mut tries = 0;
    loop {
        tries += 1;
        let mut tmp_name = name.to_owned();
        tmp_name.push(format!(
            ".{}.{}.compacting",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = path.with_file_name(tmp_name);
        match OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            // Left by a crashed process that had our pid: take the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 1000 => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalSync;
    use crate::journal::testing::{churn, ids, temp_path};
    use std::time::Instant;

    #[test]
    fn compaction_keeps_live_messages_and_the_counter_and_bounds_the_file() {
        let p = temp_path("compact");
        let text = "x".repeat(100);
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            j.set_compact_at(4096);
            for id in 1..=1000 {
                j.append(id, &text, None, Instant::now()).unwrap();
                if id % 10 == 0 {
                    j.ack(id - 3);
                }
                assert!(j.file_len() < 8192, "file grew to {}", j.file_len());
            }
        }
        let (j, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [998, 999, 1000]);
        assert_eq!(j.next_id(), 1001);
    }

    #[test]
    fn a_journal_named_like_a_temp_file_compacts_without_harming_itself() {
        let p = temp_path("self").with_file_name("outbox.compacting");
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            churn(&mut j);
        }
        let (j, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [998, 999, 1000]);
        assert_eq!(j.next_id(), 1001);
    }

    #[test]
    fn compaction_leaves_every_other_file_in_the_directory_alone() {
        let p = temp_path("neighbours").with_file_name("j.1");
        let dir = p.parent().unwrap().to_owned();
        // Another journal, in use, whose name the old temp name matched,
        // and a journal sharing the stem.
        let (mut other, _) = Journal::open(&dir.join("j.compacting"), JournalSync::Never).unwrap();
        other
            .append(1, "{\"kept\":1}", None, Instant::now())
            .unwrap();
        let (_sibling, _) = Journal::open(&dir.join("j.2"), JournalSync::Never).unwrap();
        let before: Vec<_> = ["j.compacting", "j.2"]
            .iter()
            .map(|n| std::fs::read(dir.join(n)).unwrap())
            .collect();
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            churn(&mut j);
            assert!(j.file_len() < 8192, "compaction ran");
        }
        let after: Vec<_> = ["j.compacting", "j.2"]
            .iter()
            .map(|n| std::fs::read(dir.join(n)).unwrap())
            .collect();
        assert_eq!(before, after, "a neighbour's file changed");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["j.1", "j.2", "j.compacting"], "no temp file left");
        drop(other);
        let (_, r) = Journal::open(&dir.join("j.compacting"), JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [1]);
    }

    #[test]
    fn a_failed_compaction_removes_its_temp_file_and_keeps_the_journal() {
        let p = temp_path("compactfail");
        let dir = p.parent().unwrap().to_owned();
        {
            let (mut j, _) = Journal::open(&p, JournalSync::Never).unwrap();
            j.fail_sync = true;
            churn(&mut j);
            assert!(j.file_len() > 8192, "no compaction succeeded");
        }
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["journal"]);
        let (_, r) = Journal::open(&p, JournalSync::Never).unwrap();
        assert_eq!(ids(&r), [998, 999, 1000]);
    }
}
