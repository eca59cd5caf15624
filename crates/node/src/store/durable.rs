//! How far this node's Raft log is durable, and the rules that keep a leader's
//! unsynced entries from being acknowledged, applied or announced as committed.
//!
//! openraft 0.9 waits in its core task for every log append to be reported flushed
//! before it sends the entries to followers, so a leader that fsyncs first replicates
//! one fsync late. A leader therefore reports its *own* appends flushed as soon as they
//! are written (the WAL syncer makes them durable meanwhile), and durability is enforced
//! where it matters instead:
//!
//! - the state machine applies an entry only once this node's log is durable up to it
//!   ([`DurableLog::wait_for`]): no client answer, long poll or read sees an entry that
//!   is not fsynced here and on the followers whose acknowledgements committed it
//!   (followers still acknowledge only after their own fsync);
//! - the commit index sent to followers is cut to the leader's durable log id
//!   ([`clamp_commit`]), so no follower applies an entry the leader could still lose;
//! - membership entries, and every append of a follower, are fsynced before openraft
//!   hears they are flushed ([`fast_append`] says which appends may skip it).
//!
//! Openraft's own idea of "committed" on the leader may thus run ahead of the truth by
//! one fsync; nothing outside the Raft core observes it.

use openraft::{Entry, EntryPayload, LogId, Vote};
use tokio::sync::watch;

use crate::raft_types::TypeConfig;

/// The last log id known fsynced on this node, or that a sync failed (the node must
/// stop applying: an fsync error may have lost writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Durable {
    /// Highest log id written and then fsynced (log ids order by term, then index).
    pub last: Option<LogId<u64>>,
    /// An fsync of the log failed.
    pub failed: bool,
}

/// Read side of the log's durability, shared by the state machine and the network.
#[derive(Clone)]
pub struct DurableLog {
    rx: watch::Receiver<Durable>,
}

/// Write side, held by the log store's syncer.
pub(super) type DurableSender = watch::Sender<Durable>;

/// A durability watch starting at `last` (the log as found on disk, fsynced at start).
pub(super) fn channel(last: Option<LogId<u64>>) -> (DurableSender, DurableLog) {
    let (tx, rx) = watch::channel(Durable {
        last,
        failed: false,
    });
    (tx, DurableLog { rx })
}

impl DurableLog {
    /// The last log id fsynced on this node.
    pub fn last(&self) -> Option<LogId<u64>> {
        self.rx.borrow().last
    }

    /// Waits until the log is durable up to `log_id`. Fails if a sync failed or the
    /// syncer is gone: the caller must not treat the entry as durable.
    pub async fn wait_for(&mut self, log_id: LogId<u64>) -> std::io::Result<()> {
        let state = self
            .rx
            .wait_for(|d| d.failed || d.last >= Some(log_id))
            .await
            .map_err(|_| std::io::Error::other("the Raft log syncer stopped"))?;
        if state.failed {
            return Err(std::io::Error::other("an fsync of the Raft log failed"));
        }
        Ok(())
    }
}

/// The commit index a leader may announce: openraft's, but never past what is durable
/// in the leader's own log.
pub fn clamp_commit(
    committed: Option<LogId<u64>>,
    durable: Option<LogId<u64>>,
) -> Option<LogId<u64>> {
    committed.min(durable)
}

/// True if this append is the leader's own (this node holds the committed vote of the
/// entries' term) and carries no membership change: it may be reported flushed before
/// its fsync. Everything else (a follower's append, a membership entry) is fsynced first.
pub(super) fn fast_append(
    node_id: u64,
    vote: Option<&Vote<u64>>,
    entries: &[Entry<TypeConfig>],
) -> bool {
    let Some(vote) = vote else { return false };
    vote.committed
        && vote.leader_id.node_id == node_id
        && !entries.is_empty()
        && entries.iter().all(|e| {
            e.log_id.leader_id == vote.leader_id
                && !matches!(e.payload, EntryPayload::Membership(_))
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::{CommittedLeaderId, Membership};

    use super::*;

    fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn blank(term: u64, node: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, node, index),
            payload: EntryPayload::Blank,
        }
    }

    fn leader_vote(term: u64, node: u64) -> Vote<u64> {
        Vote::new_committed(term, node)
    }

    #[test]
    fn only_the_sitting_leaders_own_entries_skip_the_fsync() {
        let entries = vec![blank(3, 1, 10), blank(3, 1, 11)];
        assert!(fast_append(1, Some(&leader_vote(3, 1)), &entries));
        // A follower (the vote names another leader) always fsyncs first.
        assert!(!fast_append(2, Some(&leader_vote(3, 1)), &entries));
        // A candidate's vote is not committed.
        assert!(!fast_append(1, Some(&Vote::new(3, 1)), &entries));
        // Entries of an earlier term of this node, received back as a follower.
        assert!(!fast_append(1, Some(&leader_vote(4, 1)), &entries));
        assert!(!fast_append(1, None, &entries));
        assert!(!fast_append(1, Some(&leader_vote(3, 1)), &[]));
    }

    #[test]
    fn membership_entries_are_fsynced_first() {
        let nodes: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
        let m = Membership::new(vec![nodes], None);
        let entries = vec![
            blank(3, 1, 10),
            Entry {
                log_id: log_id(3, 1, 11),
                payload: EntryPayload::Membership(m),
            },
        ];
        assert!(!fast_append(1, Some(&leader_vote(3, 1)), &entries));
    }

    #[test]
    fn the_announced_commit_never_passes_the_durable_log() {
        assert_eq!(
            clamp_commit(Some(log_id(3, 1, 9)), Some(log_id(3, 1, 7))),
            Some(log_id(3, 1, 7))
        );
        assert_eq!(
            clamp_commit(Some(log_id(3, 1, 7)), Some(log_id(3, 1, 9))),
            Some(log_id(3, 1, 7))
        );
        assert_eq!(clamp_commit(Some(log_id(3, 1, 7)), None), None);
        assert_eq!(clamp_commit(None, Some(log_id(3, 1, 7))), None);
    }

    #[tokio::test]
    async fn waiting_ends_when_the_log_is_durable_or_a_sync_failed() {
        let (tx, mut durable) = channel(Some(log_id(2, 1, 5)));
        durable
            .wait_for(log_id(2, 1, 5))
            .await
            .expect("already durable");
        let waiter = {
            let mut d = durable.clone();
            tokio::spawn(async move { d.wait_for(log_id(3, 1, 6)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.send_modify(|d| d.last = Some(log_id(3, 1, 6)));
        waiter.await.expect("task").expect("durable");

        let failing = {
            let mut d = durable.clone();
            tokio::spawn(async move { d.wait_for(log_id(3, 1, 9)).await })
        };
        tx.send_modify(|d| d.failed = true);
        assert!(failing.await.expect("task").is_err());
        drop(tx);
        assert!(durable.wait_for(log_id(9, 1, 99)).await.is_err());
    }
}
