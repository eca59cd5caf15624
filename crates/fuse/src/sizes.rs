//! [`ReportedSizes`]: the file sizes this mount told the kernel recently, so that an open
//! can tell whether the kernel may still hold a size the file no longer has.
//!
//! Every attribute reply lets the kernel cache the size for the attribute timeout, and
//! the kernel reads a file only up to the size it caches. A mount that `stat`s a file
//! while another mount writes it, then opens it right after the writer closed it, would
//! otherwise read a short file for up to that timeout: close-to-open broken by the
//! kernel's attribute cache. An open fetches the committed size anyway; when it differs
//! from what the kernel was told within the timeout, the adapter drops the kernel's
//! cached attributes of that file before answering (FUSE_NOTIFY_INVAL_INODE, attributes
//! only). Pure state: the caller passes the time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use plait_proto::Ino;

/// Files whose reported size is remembered at once. Past it, entries older than the
/// timeout are dropped; if that is not enough, all are, and for one timeout every open
/// counts as possibly stale.
pub(crate) const REPORTED_SIZES_MAX: usize = 65_536;

/// What the kernel may have cached, per inode, for the attribute timeout.
#[derive(Debug)]
pub(crate) struct ReportedSizes {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Inode → (size reported, when).
    sizes: HashMap<Ino, (u64, Instant)>,
    /// When the map was last emptied for being full: until one timeout later an inode
    /// missing from it may still have a size cached in the kernel.
    forgotten_at: Option<Instant>,
}

impl ReportedSizes {
    /// Sizes that the kernel caches for `ttl` (the attribute timeout).
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the kernel was told, at `now`, that `ino` is `size` bytes long.
    pub(crate) fn note(&self, ino: Ino, size: u64, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut inner = self.lock();
        inner.sizes.insert(ino, (size, now));
        if inner.sizes.len() > REPORTED_SIZES_MAX {
            let ttl = self.ttl;
            inner
                .sizes
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if inner.sizes.len() > REPORTED_SIZES_MAX {
                inner.sizes.clear();
                inner.forgotten_at = Some(now);
            }
        }
    }

    /// True if the kernel may, at `now`, hold a size for `ino` other than `size`.
    pub(crate) fn may_differ(&self, ino: Ino, size: u64, now: Instant) -> bool {
        let fresh = |at: Instant| now.saturating_duration_since(at) < self.ttl;
        let inner = self.lock();
        match inner.sizes.get(&ino) {
            Some((reported, at)) => fresh(*at) && *reported != size,
            None => inner.forgotten_at.is_some_and(fresh),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(1);

    #[test]
    fn a_size_told_within_the_timeout_is_compared() {
        let sizes = ReportedSizes::new(TTL);
        let t0 = Instant::now();
        sizes.note(7, 100, t0);
        assert!(!sizes.may_differ(7, 100, t0));
        assert!(sizes.may_differ(7, 200, t0 + Duration::from_millis(500)));
        // Past the timeout the kernel asks again by itself.
        assert!(!sizes.may_differ(7, 200, t0 + TTL));
        // Never told: nothing cached.
        assert!(!sizes.may_differ(8, 5, t0));
    }

    #[test]
    fn a_zero_timeout_caches_nothing() {
        let sizes = ReportedSizes::new(Duration::ZERO);
        let t0 = Instant::now();
        sizes.note(7, 100, t0);
        assert!(!sizes.may_differ(7, 200, t0));
    }

    #[test]
    fn a_full_map_forgets_and_then_distrusts_every_inode_for_one_timeout() {
        let sizes = ReportedSizes::new(TTL);
        let t0 = Instant::now();
        for ino in 0..=REPORTED_SIZES_MAX as u64 {
            sizes.note(ino, 1, t0);
        }
        // Everything was fresh, so everything was forgotten: any open may be stale.
        assert!(sizes.may_differ(3, 1, t0));
        assert!(!sizes.may_differ(3, 1, t0 + TTL));
        // Old entries are pruned before anything fresh is forgotten.
        let t1 = t0 + 2 * TTL;
        for ino in 0..REPORTED_SIZES_MAX as u64 {
            sizes.note(ino, 1, t0);
        }
        sizes.note(u64::MAX, 9, t1);
        assert!(sizes.may_differ(u64::MAX, 10, t1));
        assert!(!sizes.may_differ(5, 2, t1));
    }
}
