//! [`Statahead`]: when a process looks up many names of one directory in a row (`stat`
//! of every file after the kernel's caches were dropped, a backup tool, `find`), the
//! mount fetches the whole directory with attributes in a few requests and answers the
//! following lookups from that snapshot, instead of one round trip to the leader each.
//!
//! Coherence is the kernel's own: a snapshot is used for at most the entry/attribute
//! timeout, the same time the kernel may cache an entry it got from a lookup or a
//! READDIRPLUS, so a change made on another mount is seen within that timeout. Any change
//! this mount commits drops every snapshot (a generation count also stops a fetch that
//! raced with the change from being stored), so the mount always sees its own changes.
//!
//! Pure state, no I/O: the caller passes the time and does the fetching.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use plait_proto::{Attr, DirEntry, Ino};

/// Lookups that missed the kernel's cache in one directory within one timeout before the
/// mount fetches the whole directory. Low, because a listing costs about as much as two
/// lookups and every lookup it answers saves one round trip; not 1, so that walking a
/// path (one lookup per directory) lists nothing.
pub const STATAHEAD_TRIGGER_LOOKUPS: u32 = 3;

/// Largest directory kept as a snapshot, in entries; a larger one is remembered as too
/// large (for one timeout) so that its lookups are not slowed by repeated listing.
pub const SNAPSHOT_ENTRIES_MAX: usize = 4096;

/// Directories with a snapshot (or a too-large mark) at once; the oldest goes first.
pub const SNAPSHOTS_MAX: usize = 32;

/// Directories whose recent lookups are counted at once; past it the counts start over.
const COUNTED_DIRS_MAX: usize = 1024;

/// What a snapshot says about one name.
///
/// A snapshot never says that a name is absent: another mount may have created and
/// closed that file a moment ago, and an open by name must then find it (close-to-open),
/// so a name missing from the snapshot is asked of the leader. A name that is there but
/// went meanwhile fails at open with ESTALE, which drops the snapshots before the kernel
/// looks the name up again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name exists with these attributes.
    Found(Attr),
    /// No usable snapshot, or the name is not in it: ask the leader.
    Unknown,
}

/// The statahead state of one mount.
#[derive(Debug)]
pub struct Statahead {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every change this mount commits.
    generation: u64,
    snapshots: HashMap<Ino, Snapshot>,
    /// Directory → (start of the counting window, lookups that went to the leader).
    misses: HashMap<Ino, (Instant, u32)>,
}

#[derive(Debug)]
struct Snapshot {
    fetched_at: Instant,
    /// `None`: the directory was too large to keep.
    entries: Option<HashMap<Vec<u8>, Attr>>,
}

impl Snapshot {
    /// Replaces the attributes of every entry naming `attr.ino`.
    fn update(&mut self, attr: &Attr) {
        for a in self.entries.iter_mut().flat_map(|e| e.values_mut()) {
            if a.ino == attr.ino {
                *a = attr.clone();
            }
        }
    }
}

impl Statahead {
    /// Statahead whose snapshots live for `ttl` (the smaller of the kernel's entry and
    /// attribute timeouts); a zero `ttl` disables it.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a fresh snapshot of `parent` says about `name`.
    pub fn answer(&self, parent: Ino, name: &[u8], now: Instant) -> Answer {
        let inner = self.lock();
        match inner.snapshots.get(&parent) {
            Some(snap) if now.saturating_duration_since(snap.fetched_at) < self.ttl => {
                match &snap.entries {
                    Some(entries) => entries
                        .get(name)
                        .cloned()
                        .map_or(Answer::Unknown, Answer::Found),
                    None => Answer::Unknown,
                }
            }
            _ => Answer::Unknown,
        }
    }

    /// Counts a lookup in `parent` that the leader must answer; true when the directory
    /// should be fetched now (the lookups reached [`STATAHEAD_TRIGGER_LOOKUPS`] within
    /// one timeout and no fresh snapshot or too-large mark exists).
    pub fn note_miss(&self, parent: Ino, now: Instant) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let mut inner = self.lock();
        if inner
            .snapshots
            .get(&parent)
            .is_some_and(|s| now.saturating_duration_since(s.fetched_at) < self.ttl)
        {
            return false;
        }
        if inner.misses.len() >= COUNTED_DIRS_MAX && !inner.misses.contains_key(&parent) {
            inner.misses.clear();
        }
        let ttl = self.ttl;
        let (since, count) = inner.misses.entry(parent).or_insert((now, 0));
        if now.saturating_duration_since(*since) >= ttl {
            *since = now;
            *count = 0;
        }
        *count += 1;
        if *count < STATAHEAD_TRIGGER_LOOKUPS {
            return false;
        }
        inner.misses.remove(&parent);
        true
    }

    /// The current generation: pass it to [`Self::store`] with what was fetched after
    /// reading it.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps the listing of `parent` fetched since `generation` (`None`: it had more than
    /// [`SNAPSHOT_ENTRIES_MAX`] entries), unless this mount changed something meanwhile.
    pub fn store(
        &self,
        parent: Ino,
        generation: u64,
        entries: Option<Vec<DirEntry>>,
        fetched_at: Instant,
    ) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.snapshots.len() >= SNAPSHOTS_MAX && !inner.snapshots.contains_key(&parent) {
            let oldest = inner
                .snapshots
                .iter()
                .min_by_key(|(_, s)| s.fetched_at)
                .map(|(ino, _)| *ino);
            if let Some(ino) = oldest {
                inner.snapshots.remove(&ino);
            }
        }
        let entries = entries
            .filter(|e| e.len() <= SNAPSHOT_ENTRIES_MAX)
            .map(|e| e.into_iter().map(|d| (d.name, d.attr)).collect());
        inner.snapshots.insert(
            parent,
            Snapshot {
                fetched_at,
                entries,
            },
        );
    }

    /// Drops every snapshot: this mount is about to change (or tried to change) something.
    pub fn invalidate(&self) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.snapshots.clear();
    }

    /// Before this mount changes the attributes of one inode (a write commit, a
    /// truncation, chmod): snapshots stay, racing fetches are stopped. Returns the
    /// generation to pass to [`Self::updated`].
    pub fn begin_change(&self) -> u64 {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.generation
    }

    /// The change begun at `generation` left inode `attr.ino` with `attr`: entries naming
    /// it take the new attributes, unless anything else happened meanwhile (then every
    /// snapshot goes).
    pub fn updated(&self, generation: u64, attr: &Attr) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        if inner.generation != generation.wrapping_add(1) {
            inner.snapshots.clear();
            return;
        }
        for snap in inner.snapshots.values_mut() {
            snap.update(attr);
        }
    }

    /// Before this mount creates a name in `parent`: drops every snapshot but `parent`'s
    /// (the new entry changes no other entry of `parent`, but the attributes of `parent`
    /// itself, which other snapshots may hold) and stops racing fetches. Returns the
    /// generation to pass to [`Self::created`].
    pub fn invalidate_except(&self, parent: Ino) -> u64 {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.snapshots.retain(|ino, _| *ino == parent);
        inner.generation
    }

    /// This mount created `parent/name` as `attr`: `parent`'s snapshot gains the entry,
    /// unless anything else happened since [`Self::invalidate_except`] returned
    /// `generation` (then every snapshot goes).
    pub fn created(&self, generation: u64, parent: Ino, name: &[u8], attr: &Attr) {
        let mut inner = self.lock();
        if inner.generation != generation {
            inner.generation = inner.generation.wrapping_add(1);
            inner.snapshots.clear();
            return;
        }
        inner.generation = inner.generation.wrapping_add(1);
        inner.snapshots.retain(|ino, _| *ino == parent);
        if let Some(entries) = inner
            .snapshots
            .get_mut(&parent)
            .and_then(|s| s.entries.as_mut())
        {
            if entries.len() >= SNAPSHOT_ENTRIES_MAX {
                inner.snapshots.remove(&parent);
            } else {
                entries.insert(name.to_vec(), attr.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, ino: Ino) -> DirEntry {
        crate::fs::dir::file_entry(name, ino, 3)
    }

    const TTL: Duration = Duration::from_millis(1000);

    fn triggered(s: &Statahead, dir: Ino, now: Instant) -> u32 {
        (1..=STATAHEAD_TRIGGER_LOOKUPS * 2)
            .find(|_| s.note_miss(dir, now))
            .unwrap_or(0)
    }

    #[test]
    fn a_run_of_lookups_triggers_one_fetch_whose_snapshot_answers_until_the_timeout() {
        let s = Statahead::new(TTL);
        let t0 = Instant::now();
        assert_eq!(s.answer(1, b"a", t0), Answer::Unknown);
        assert_eq!(triggered(&s, 1, t0), STATAHEAD_TRIGGER_LOOKUPS);
        let generation = s.generation();
        s.store(1, generation, Some(vec![entry("a", 10)]), t0);
        assert!(matches!(s.answer(1, b"a", t0), Answer::Found(a) if a.ino == 10));
        assert_eq!(
            s.answer(1, b"b", t0),
            Answer::Unknown,
            "absence is never answered"
        );
        assert_eq!(s.answer(2, b"a", t0), Answer::Unknown);
        // No second fetch while the snapshot is fresh.
        assert!(!s.note_miss(1, t0 + TTL / 2));
        // Expired at the timeout: the kernel would have asked again by then too.
        assert_eq!(s.answer(1, b"a", t0 + TTL), Answer::Unknown);
    }

    #[test]
    fn lookups_spread_over_more_than_a_timeout_do_not_trigger() {
        let s = Statahead::new(TTL);
        let t0 = Instant::now();
        for i in 0..STATAHEAD_TRIGGER_LOOKUPS * 3 {
            assert!(!s.note_miss(1, t0 + TTL / 2 * i));
        }
    }

    #[test]
    fn a_change_of_this_mount_drops_snapshots_and_stops_a_racing_fetch() {
        let s = Statahead::new(TTL);
        let t0 = Instant::now();
        let generation = s.generation();
        s.store(1, generation, Some(vec![entry("a", 10)]), t0);
        s.invalidate();
        assert_eq!(s.answer(1, b"a", t0), Answer::Unknown);
        // A fetch that began before the change is not kept.
        s.store(1, generation, Some(vec![entry("a", 10)]), t0);
        assert_eq!(s.answer(1, b"b", t0), Answer::Unknown);
    }

    #[test]
    fn a_create_of_this_mount_keeps_its_directorys_snapshot_up_to_date() {
        let s = Statahead::new(TTL);
        let t0 = Instant::now();
        let generation = s.generation();
        s.store(1, generation, Some(vec![entry("a", 10)]), t0);
        s.store(2, generation, Some(vec![entry("d", 1)]), t0);
        let kept = s.invalidate_except(1);
        assert_eq!(
            s.answer(2, b"d", t0),
            Answer::Unknown,
            "may hold 1's old attributes"
        );
        s.created(kept, 1, b"b", &entry("b", 11).attr);
        assert!(matches!(s.answer(1, b"b", t0), Answer::Found(a) if a.ino == 11));
        assert!(matches!(s.answer(1, b"a", t0), Answer::Found(a) if a.ino == 10));
        // Another change while the create was in flight: nothing is kept.
        let kept = s.invalidate_except(1);
        s.invalidate();
        s.created(kept, 1, b"c", &entry("c", 12).attr);
        assert_eq!(s.answer(1, b"a", t0), Answer::Unknown);
    }

    #[test]
    fn a_write_of_this_mount_updates_the_entry_in_place() {
        let s = Statahead::new(TTL);
        let t0 = Instant::now();
        let generation = s.generation();
        s.store(
            1,
            generation,
            Some(vec![entry("a", 10), entry("b", 11)]),
            t0,
        );
        let g = s.begin_change();
        let mut grown = entry("a", 10).attr;
        grown.size = 8192;
        s.updated(g, &grown);
        assert!(matches!(s.answer(1, b"a", t0), Answer::Found(a) if a.size == 8192));
        assert!(matches!(s.answer(1, b"b", t0), Answer::Found(a) if a.size == 3));
        // Two changes at once: nothing is kept.
        let g = s.begin_change();
        let _other = s.begin_change();
        s.updated(g, &grown);
        assert_eq!(s.answer(1, b"a", t0), Answer::Unknown);
    }

    #[test]
    fn a_large_directory_is_not_kept_nor_fetched_again_within_the_timeout() {
        let s = Statahead::new(TTL);
        let t0 = Instant::now();
        let generation = s.generation();
        s.store(1, generation, None, t0);
        assert_eq!(s.answer(1, b"a", t0), Answer::Unknown);
        assert!(!s.note_miss(1, t0));
        assert_eq!(triggered(&s, 1, t0 + TTL), STATAHEAD_TRIGGER_LOOKUPS);
    }

    #[test]
    fn snapshots_are_bounded() {
        let s = Statahead::new(TTL);
        let t0 = Instant::now();
        let last = SNAPSHOTS_MAX as u64 + 9;
        for dir in 0..=last {
            let generation = s.generation();
            let at = t0 + Duration::from_millis(dir);
            s.store(dir, generation, Some(vec![entry("x", 100 + dir)]), at);
        }
        assert_eq!(s.lock().snapshots.len(), SNAPSHOTS_MAX);
        // The oldest went first.
        assert_eq!(s.answer(0, b"x", t0), Answer::Unknown);
        let newest = s.answer(last, b"x", t0 + Duration::from_millis(50));
        assert_eq!(newest, Answer::Found(entry("x", 100 + last).attr));
    }

    #[test]
    fn a_zero_timeout_disables_statahead() {
        let s = Statahead::new(Duration::ZERO);
        let t0 = Instant::now();
        assert_eq!(triggered(&s, 1, t0), 0);
    }
}
