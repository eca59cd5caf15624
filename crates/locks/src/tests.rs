//! Unit tests of every semantic point, and a property test against a byte-level reference
//! model (including blocking requests, releases and cancellation).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::LockType::{Read, Write};
use crate::*;

const SESSION: u64 = 7;

fn own(n: u64) -> Owner {
    Owner::new(SESSION, n)
}

fn range(start: u64, end: u64) -> LockRange {
    LockRange::new(start, end).unwrap()
}

fn request(kind: LockKind, owner: Owner, lock_type: LockType, range: LockRange) -> LockRequest {
    LockRequest {
        kind,
        owner,
        lock_type,
        range,
        pid: 1000 + owner.owner as u32,
    }
}

fn posix(n: u64, lock_type: LockType, start: u64, end: u64) -> LockRequest {
    request(LockKind::Posix, own(n), lock_type, range(start, end))
}

fn flock(n: u64, lock_type: LockType) -> LockRequest {
    request(LockKind::Flock, own(n), lock_type, LockRange::WHOLE)
}

/// Set without waiting; the outcome.
fn try_set(locks: &mut FileLocks, request: LockRequest) -> SetOutcome {
    let reply = locks.set(request, WaitMode::NoWait, 1).unwrap();
    locks.check_invariants().unwrap();
    reply.outcome
}

/// Set, waiting under `waiter_id` if needed, at time `now_ms`.
fn wait_set(locks: &mut FileLocks, request: LockRequest, waiter_id: u64, now_ms: u64) -> SetReply {
    let reply = locks
        .set(request, WaitMode::Wait { waiter_id }, now_ms)
        .unwrap();
    locks.check_invariants().unwrap();
    reply
}

/// `owner`'s records of `kind` as (type, start, end).
fn records(locks: &FileLocks, kind: LockKind, owner: Owner) -> Vec<(LockType, u64, u64)> {
    locks
        .holders()
        .filter(|h| h.kind == kind && h.owner == owner)
        .map(|h| (h.lock_type, h.range.start(), h.range.end()))
        .collect()
}

fn posix_records(locks: &FileLocks, n: u64) -> Vec<(LockType, u64, u64)> {
    records(locks, LockKind::Posix, own(n))
}

fn granted_ids(grants: &[Grant]) -> Vec<u64> {
    grants
        .iter()
        .map(|g| {
            assert_eq!(g.result, Ok(()));
            g.waiter_id
        })
        .collect()
}

fn waiter_ids(locks: &FileLocks) -> Vec<u64> {
    locks.waiters().map(|w| w.waiter_id).collect()
}

#[test]
fn range_validation_and_fuse_mapping() {
    assert_eq!(
        LockRange::new(5, 4),
        Err(LockError::InvalidRange { start: 5, end: 4 })
    );
    assert_eq!(LockRange::new(5, 4).unwrap_err().errno(), errno::EINVAL);
    assert_eq!(range(3, 3).start(), 3);
    assert!(LockRange::to_eof(9).is_to_eof());
    let fuse = LockRange::from_fuse(10, OFFSET_MAX).unwrap();
    assert_eq!(fuse, LockRange::to_eof(10));
    assert_eq!(fuse.fuse_end(), OFFSET_MAX);
    assert_eq!(range(0, 99).fuse_end(), 99);
    assert!(LockRange::from_fuse(10, 9).is_err());
}

#[test]
fn errno_values_match_libc() {
    assert_eq!(errno::EAGAIN, libc::EAGAIN);
    assert_eq!(errno::EINVAL, libc::EINVAL);
    assert_eq!(errno::EDEADLK, libc::EDEADLK);
    assert_eq!(errno::ENOLCK, libc::ENOLCK);
    assert_eq!(LockError::TooManyLocks.errno(), libc::ENOLCK);
    assert_eq!(LockError::TooManyWaiters.errno(), libc::ENOLCK);
    assert_eq!(LockError::WaiterIdInUse(1).errno(), libc::EINVAL);
    assert_eq!(SetOutcome::WouldBlock.errno(), Some(libc::EAGAIN));
    assert_eq!(SetOutcome::Deadlock.errno(), Some(libc::EDEADLK));
    assert_eq!(SetOutcome::Granted.errno(), None);
    assert_eq!(SetOutcome::Queued.errno(), None);
}

#[test]
fn read_in_the_middle_of_a_write_splits_it_in_three() {
    let mut locks = FileLocks::new();
    assert_eq!(
        try_set(&mut locks, posix(1, Write, 0, 99)),
        SetOutcome::Granted
    );
    assert_eq!(
        try_set(&mut locks, posix(1, Read, 40, 59)),
        SetOutcome::Granted
    );
    assert_eq!(
        posix_records(&locks, 1),
        vec![(Write, 0, 39), (Read, 40, 59), (Write, 60, 99)]
    );
    // Another owner may now read the middle but not the write parts.
    assert_eq!(
        locks.test(LockKind::Posix, own(2), Read, range(40, 59)),
        None
    );
    let conflict = locks
        .test(LockKind::Posix, own(2), Read, range(30, 45))
        .unwrap();
    assert_eq!(conflict.range, range(0, 39));
    assert_eq!(conflict.lock_type, Write);
    assert_eq!(conflict.owner, own(1));
    assert_eq!(conflict.pid, 1001);
}

#[test]
fn overlapping_and_adjacent_same_type_ranges_merge() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Read, 0, 9));
    try_set(&mut locks, posix(1, Read, 5, 14));
    assert_eq!(posix_records(&locks, 1), vec![(Read, 0, 14)]);
    try_set(&mut locks, posix(1, Read, 15, 19));
    assert_eq!(posix_records(&locks, 1), vec![(Read, 0, 19)]);
    // Adjacent on the left too.
    try_set(&mut locks, posix(2, Write, 10, 19));
    try_set(&mut locks, posix(2, Write, 0, 9));
    // (owner 2 conflicts with owner 1: nothing changed for it)
    assert_eq!(posix_records(&locks, 2), vec![]);
    try_set(&mut locks, posix(3, Write, 30, 39));
    try_set(&mut locks, posix(3, Write, 20, 29));
    assert_eq!(posix_records(&locks, 3), vec![(Write, 20, 39)]);
}

#[test]
fn a_lock_bridging_two_records_merges_all_three() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 9));
    try_set(&mut locks, posix(1, Write, 20, 29));
    try_set(&mut locks, posix(1, Read, 40, 49));
    try_set(&mut locks, posix(1, Write, 10, 19));
    assert_eq!(
        posix_records(&locks, 1),
        vec![(Write, 0, 29), (Read, 40, 49)]
    );
}

#[test]
fn adjacent_ranges_of_different_types_stay_apart() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 9));
    try_set(&mut locks, posix(1, Read, 10, 19));
    assert_eq!(
        posix_records(&locks, 1),
        vec![(Write, 0, 9), (Read, 10, 19)]
    );
}

#[test]
fn merged_record_keeps_the_earliest_since() {
    let mut locks = FileLocks::new();
    locks
        .set(posix(1, Read, 0, 9), WaitMode::NoWait, 100)
        .unwrap();
    locks
        .set(posix(1, Read, 10, 19), WaitMode::NoWait, 200)
        .unwrap();
    let held: Vec<_> = locks.holders().collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].since_ms, 100);
}

#[test]
fn read_to_write_conversion_needs_no_conflict() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Read, 0, 99));
    try_set(&mut locks, posix(2, Read, 50, 59));
    // Upgrading over owner 2's read lock fails and changes nothing.
    assert_eq!(
        try_set(&mut locks, posix(1, Write, 40, 69)),
        SetOutcome::WouldBlock
    );
    assert_eq!(posix_records(&locks, 1), vec![(Read, 0, 99)]);
    // Upgrading elsewhere works and splits.
    assert_eq!(
        try_set(&mut locks, posix(1, Write, 0, 9)),
        SetOutcome::Granted
    );
    assert_eq!(
        posix_records(&locks, 1),
        vec![(Write, 0, 9), (Read, 10, 99)]
    );
}

#[test]
fn write_to_read_conversion_always_works_and_wakes_readers() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 99));
    assert_eq!(
        wait_set(&mut locks, posix(2, Read, 10, 19), 1, 5).outcome,
        SetOutcome::Queued
    );
    assert_eq!(
        wait_set(&mut locks, posix(3, Write, 10, 19), 2, 6).outcome,
        SetOutcome::Queued
    );
    let reply = wait_set(&mut locks, posix(1, Read, 0, 99), 99, 10);
    assert_eq!(reply.outcome, SetOutcome::Granted);
    assert_eq!(granted_ids(&reply.grants), vec![1]);
    assert_eq!(posix_records(&locks, 1), vec![(Read, 0, 99)]);
    assert_eq!(posix_records(&locks, 2), vec![(Read, 10, 19)]);
    assert_eq!(waiter_ids(&locks), vec![2]);
    let granted = locks.holders().find(|h| h.owner == own(2)).unwrap();
    assert_eq!(granted.since_ms, 10);
}

#[test]
fn unlocking_a_sub_range_splits() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 99));
    assert_eq!(
        locks
            .unlock(LockKind::Posix, own(1), range(10, 19), 0)
            .unwrap(),
        vec![]
    );
    assert_eq!(
        posix_records(&locks, 1),
        vec![(Write, 0, 9), (Write, 20, 99)]
    );
    // Unlocking over a hole and the edges.
    locks
        .unlock(LockKind::Posix, own(1), range(5, 24), 0)
        .unwrap();
    assert_eq!(
        posix_records(&locks, 1),
        vec![(Write, 0, 4), (Write, 25, 99)]
    );
    // Unlocking what is not held changes nothing.
    locks
        .unlock(LockKind::Posix, own(2), range(0, 99), 0)
        .unwrap();
    locks
        .unlock(LockKind::Posix, own(1), range(200, 300), 0)
        .unwrap();
    assert_eq!(
        posix_records(&locks, 1),
        vec![(Write, 0, 4), (Write, 25, 99)]
    );
    locks
        .unlock(LockKind::Posix, own(1), LockRange::WHOLE, 0)
        .unwrap();
    assert!(locks.is_empty());
}

#[test]
fn ranges_to_end_of_file() {
    let mut locks = FileLocks::new();
    try_set(
        &mut locks,
        request(LockKind::Posix, own(1), Write, LockRange::to_eof(100)),
    );
    assert!(
        locks
            .test(LockKind::Posix, own(2), Read, range(u64::MAX, u64::MAX))
            .is_some()
    );
    assert!(
        locks
            .test(LockKind::Posix, own(2), Read, range(0, 99))
            .is_none()
    );
    locks
        .unlock(LockKind::Posix, own(1), LockRange::to_eof(200), 0)
        .unwrap();
    assert_eq!(posix_records(&locks, 1), vec![(Write, 100, 199)]);
    // Setting the last byte and the rest up to it: merges without overflowing.
    try_set(&mut locks, posix(1, Write, u64::MAX, u64::MAX));
    try_set(&mut locks, posix(1, Write, 200, u64::MAX - 1));
    assert_eq!(posix_records(&locks, 1), vec![(Write, 100, u64::MAX)]);
    // A read in the middle of a to-EOF write leaves a to-EOF tail.
    try_set(&mut locks, posix(1, Read, 150, 159));
    assert_eq!(
        posix_records(&locks, 1),
        vec![(Write, 100, 149), (Read, 150, 159), (Write, 160, u64::MAX)]
    );
    // Unlocking the last byte only.
    locks
        .unlock(LockKind::Posix, own(1), range(u64::MAX, u64::MAX), 0)
        .unwrap();
    assert_eq!(
        posix_records(&locks, 1),
        vec![
            (Write, 100, 149),
            (Read, 150, 159),
            (Write, 160, u64::MAX - 1)
        ]
    );
}

#[test]
fn own_locks_never_conflict() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 9));
    assert_eq!(
        locks.test(LockKind::Posix, own(1), Write, range(0, 9)),
        None
    );
    // Same `owner` number in another session is another owner.
    assert!(
        locks
            .test(
                LockKind::Posix,
                Owner::new(SESSION + 1, 1),
                Read,
                range(0, 0)
            )
            .is_some()
    );
}

#[test]
fn posix_and_flock_are_independent() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, u64::MAX));
    assert_eq!(try_set(&mut locks, flock(2, Write)), SetOutcome::Granted);
    assert_eq!(
        locks
            .test(LockKind::Posix, own(3), Read, range(0, 0))
            .unwrap()
            .owner,
        own(1)
    );
    assert_eq!(
        locks
            .test(LockKind::Flock, own(3), Read, range(0, 0))
            .unwrap()
            .owner,
        own(2)
    );
    // Unlocking one kind leaves the other.
    locks
        .unlock(LockKind::Flock, own(1), LockRange::WHOLE, 0)
        .unwrap();
    locks.release_owner(LockKind::Flock, own(2), 0);
    assert_eq!(posix_records(&locks, 1), vec![(Write, 0, u64::MAX)]);
    assert_eq!(
        locks.test(LockKind::Flock, own(3), Write, LockRange::WHOLE),
        None
    );
}

#[test]
fn flock_is_whole_file_and_one_per_owner() {
    let mut locks = FileLocks::new();
    // The range of a flock request is ignored.
    try_set(
        &mut locks,
        request(LockKind::Flock, own(1), Read, range(10, 20)),
    );
    assert_eq!(
        records(&locks, LockKind::Flock, own(1)),
        vec![(Read, 0, u64::MAX)]
    );
    try_set(&mut locks, flock(2, Read));
    assert!(
        locks
            .test(LockKind::Flock, own(3), Write, range(500, 500))
            .is_some()
    );
    // Conversion replaces the single lock.
    locks.release_owner(LockKind::Flock, own(2), 0);
    assert_eq!(try_set(&mut locks, flock(1, Write)), SetOutcome::Granted);
    assert_eq!(
        records(&locks, LockKind::Flock, own(1)),
        vec![(Write, 0, u64::MAX)]
    );
    assert_eq!(try_set(&mut locks, flock(1, Read)), SetOutcome::Granted);
    assert_eq!(
        records(&locks, LockKind::Flock, own(1)),
        vec![(Read, 0, u64::MAX)]
    );
    // Same type again: no change.
    assert_eq!(try_set(&mut locks, flock(1, Read)), SetOutcome::Granted);
    assert_eq!(locks.holders().count(), 1);
}

#[test]
fn failed_flock_conversion_drops_the_old_lock_as_linux_does() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, flock(1, Read));
    try_set(&mut locks, flock(2, Read));
    assert_eq!(try_set(&mut locks, flock(1, Write)), SetOutcome::WouldBlock);
    assert_eq!(records(&locks, LockKind::Flock, own(1)), vec![]);
    // Now owner 2 alone holds a read lock and may upgrade.
    assert_eq!(try_set(&mut locks, flock(2, Write)), SetOutcome::Granted);
}

#[test]
fn failed_flock_conversion_lets_waiters_through() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, flock(1, Read));
    try_set(&mut locks, flock(2, Read));
    // Owner 3 waits for an exclusive lock; owner 1's failed upgrade drops its lock, owner
    // 2 then gives up its own, and owner 3 gets in before owner 1's queued upgrade.
    assert_eq!(
        wait_set(&mut locks, flock(3, Write), 30, 1).outcome,
        SetOutcome::Queued
    );
    let reply = wait_set(&mut locks, flock(1, Write), 10, 2);
    assert_eq!(reply.outcome, SetOutcome::Queued);
    assert_eq!(reply.grants, vec![]);
    let grants = locks
        .unlock(LockKind::Flock, own(2), LockRange::WHOLE, 3)
        .unwrap();
    assert_eq!(granted_ids(&grants), vec![30]);
    assert_eq!(waiter_ids(&locks), vec![10]);
}

#[test]
fn waiters_are_granted_oldest_first() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 9));
    for (n, id) in [(2, 20), (3, 30), (4, 40)] {
        assert_eq!(
            wait_set(&mut locks, posix(n, Write, 0, 9), id, n).outcome,
            SetOutcome::Queued
        );
    }
    let grants = locks
        .unlock(LockKind::Posix, own(1), range(0, 9), 100)
        .unwrap();
    assert_eq!(granted_ids(&grants), vec![20]);
    assert_eq!(grants[0].owner, own(2));
    assert_eq!(grants[0].range, range(0, 9));
    assert_eq!(grants[0].lock_type, Write);
    assert_eq!(waiter_ids(&locks), vec![30, 40]);
    let grants = locks.release_owner(LockKind::Posix, own(2), 200).grants;
    assert_eq!(granted_ids(&grants), vec![30]);
    let held = locks.holders().find(|h| h.owner == own(3)).unwrap();
    assert_eq!(held.since_ms, 200);
    assert_eq!(held.pid, 1003);
}

#[test]
fn several_compatible_waiters_are_granted_together() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 99));
    wait_set(&mut locks, posix(2, Read, 0, 9), 20, 0);
    wait_set(&mut locks, posix(3, Write, 5, 5), 30, 0);
    wait_set(&mut locks, posix(4, Read, 0, 9), 40, 0);
    wait_set(&mut locks, posix(5, Write, 50, 59), 50, 0);
    let grants = locks
        .unlock(LockKind::Posix, own(1), LockRange::WHOLE, 0)
        .unwrap();
    // 30 conflicts with 20's new lock; 40 shares with 20; 50 is elsewhere.
    assert_eq!(granted_ids(&grants), vec![20, 40, 50]);
    assert_eq!(waiter_ids(&locks), vec![30]);
}

#[test]
fn a_new_request_does_not_queue_behind_waiters() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Read, 0, 9));
    wait_set(&mut locks, posix(2, Write, 0, 9), 20, 0);
    // Owner 3 may still read, though owner 2 waits for a write lock (Linux does this too).
    assert_eq!(
        try_set(&mut locks, posix(3, Read, 0, 9)),
        SetOutcome::Granted
    );
}

#[test]
fn a_grant_that_downgrades_rescans_earlier_waiters() {
    let mut locks = FileLocks::new();
    // Owner 1 holds write [0,9]; owner 3 holds write [10,19].
    try_set(&mut locks, posix(1, Write, 0, 9));
    try_set(&mut locks, posix(3, Write, 10, 19));
    // Waiter 20 (owner 2) wants read [0,9]: blocked by owner 1.
    wait_set(&mut locks, posix(2, Read, 0, 9), 20, 0);
    // Waiter 10 (owner 1) wants read [0,19]: blocked by owner 3 only.
    wait_set(&mut locks, posix(1, Read, 0, 19), 10, 0);
    // Owner 3 leaves: waiter 10 is granted, which downgrades owner 1's write lock, which
    // lets the older waiter 20 through.
    let grants = locks.release_owner(LockKind::Posix, own(3), 0).grants;
    assert_eq!(granted_ids(&grants), vec![10, 20]);
    assert!(locks.waiters().next().is_none());
}

#[test]
fn release_owner_drops_its_locks_and_waiters() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 9));
    try_set(&mut locks, posix(2, Write, 20, 29));
    try_set(&mut locks, flock(2, Write));
    wait_set(&mut locks, posix(2, Write, 0, 9), 21, 0);
    wait_set(&mut locks, posix(3, Write, 20, 29), 31, 0);
    let released = locks.release_owner(LockKind::Posix, own(2), 5);
    assert_eq!(
        released
            .dropped_waiters
            .iter()
            .map(|w| w.waiter_id)
            .collect::<Vec<_>>(),
        vec![21]
    );
    assert_eq!(granted_ids(&released.grants), vec![31]);
    assert_eq!(posix_records(&locks, 2), vec![]);
    // Its flock lock stays.
    assert_eq!(
        records(&locks, LockKind::Flock, own(2)),
        vec![(Write, 0, u64::MAX)]
    );
}

#[test]
fn release_session_drops_everything_of_the_session() {
    let mut locks = FileLocks::new();
    let other = Owner::new(SESSION + 1, 1);
    try_set(&mut locks, posix(1, Write, 0, 9));
    try_set(&mut locks, posix(2, Read, 20, 29));
    try_set(&mut locks, flock(3, Write));
    wait_set(&mut locks, posix(4, Write, 0, 0), 40, 0);
    wait_set(
        &mut locks,
        request(LockKind::Posix, other, Write, range(0, 29)),
        50,
        0,
    );
    wait_set(
        &mut locks,
        request(LockKind::Flock, other, Read, LockRange::WHOLE),
        51,
        0,
    );
    let released = locks.release_session(SESSION, 9);
    assert_eq!(released.dropped_waiters.len(), 1);
    assert_eq!(released.dropped_waiters[0].waiter_id, 40);
    assert_eq!(granted_ids(&released.grants), vec![50, 51]);
    assert!(locks.holders().all(|h| h.owner == other));
    assert!(locks.waiters().next().is_none());
    locks.release_session(SESSION + 1, 10);
    assert!(locks.is_empty());
}

#[test]
fn cancel_waiter_removes_without_granting() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 9));
    wait_set(&mut locks, posix(2, Write, 0, 9), 20, 3);
    wait_set(&mut locks, posix(3, Write, 0, 9), 30, 4);
    let cancelled = locks.cancel_waiter(20).unwrap();
    assert_eq!(cancelled.owner, own(2));
    assert_eq!(cancelled.queued_ms, 3);
    assert_eq!(locks.cancel_waiter(20), None);
    assert_eq!(waiter_ids(&locks), vec![30]);
    let grants = locks
        .unlock(LockKind::Posix, own(1), range(0, 9), 0)
        .unwrap();
    assert_eq!(granted_ids(&grants), vec![30]);
    assert_eq!(posix_records(&locks, 2), vec![]);
}

#[test]
fn two_owner_cycle_is_a_deadlock() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 0));
    try_set(&mut locks, posix(2, Write, 1, 1));
    assert_eq!(
        wait_set(&mut locks, posix(1, Write, 1, 1), 10, 0).outcome,
        SetOutcome::Queued
    );
    let reply = wait_set(&mut locks, posix(2, Write, 0, 0), 20, 0);
    assert_eq!(reply.outcome, SetOutcome::Deadlock);
    assert_eq!(waiter_ids(&locks), vec![10]);
    // Without waiting it is a plain EAGAIN.
    assert_eq!(
        try_set(&mut locks, posix(2, Write, 0, 0)),
        SetOutcome::WouldBlock
    );
}

#[test]
fn three_owner_cycle_is_a_deadlock_and_a_chain_is_not() {
    let mut locks = FileLocks::new();
    for n in 1..=3 {
        try_set(&mut locks, posix(n, Write, n, n));
    }
    // 1 waits for 2, 2 waits for 3.
    wait_set(&mut locks, posix(1, Write, 2, 2), 10, 0);
    wait_set(&mut locks, posix(2, Write, 3, 3), 20, 0);
    // Owner 4 waiting for 1 closes no cycle.
    try_set(&mut locks, posix(4, Read, 9, 9));
    assert_eq!(
        wait_set(&mut locks, posix(4, Write, 1, 1), 40, 0).outcome,
        SetOutcome::Queued
    );
    // Owner 3 waiting for 1 closes 1 → 2 → 3 → 1.
    assert_eq!(
        wait_set(&mut locks, posix(3, Write, 1, 1), 30, 0).outcome,
        SetOutcome::Deadlock
    );
    // A reader waiting for 4's read lock does not wait for 4: no conflict, no edge.
    assert_eq!(
        try_set(&mut locks, posix(1, Read, 9, 9)),
        SetOutcome::Granted
    );
}

#[test]
fn flock_requests_are_not_checked_for_deadlock() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, flock(1, Write));
    try_set(&mut locks, posix(2, Write, 0, 0));
    wait_set(&mut locks, flock(2, Write), 20, 0);
    // Owner 1 waiting for 2's POSIX lock: the flock wait is not an edge.
    assert_eq!(
        wait_set(&mut locks, posix(1, Write, 0, 0), 10, 0).outcome,
        SetOutcome::Queued
    );
}

#[test]
fn too_many_locks() {
    let mut locks = FileLocks::new();
    let max = LOCKS_PER_FILE_MAX as u64;
    // Disjoint, non-adjacent single bytes: one record each, up to the bound.
    for i in 0..max {
        let outcome = locks
            .set(posix(1, Write, 2 * i, 2 * i), WaitMode::NoWait, 0)
            .unwrap()
            .outcome;
        assert_eq!(outcome, SetOutcome::Granted);
    }
    locks.check_invariants().unwrap();
    let full = locks.clone();
    let err = locks
        .set(posix(2, Read, 2 * max, 2 * max), WaitMode::NoWait, 0)
        .unwrap_err();
    assert_eq!(err, LockError::TooManyLocks);
    assert_eq!(err.errno(), errno::ENOLCK);
    assert_eq!(locks, full);
    // A lock that merges records (fewer records) still works: [0] [1] [2] become one.
    assert_eq!(
        try_set(&mut locks, posix(1, Write, 1, 1)),
        SetOutcome::Granted
    );
    assert_eq!(locks.holders().count(), LOCKS_PER_FILE_MAX - 1);
    // Fill up again with owner 2, then unlock the middle of owner 1's [0,2]: the split
    // needs one more record and fails, changing nothing.
    assert_eq!(
        try_set(&mut locks, posix(2, Write, 2 * max, 2 * max)),
        SetOutcome::Granted
    );
    assert_eq!(locks.holders().count(), LOCKS_PER_FILE_MAX);
    let full = locks.clone();
    assert_eq!(
        locks.unlock(LockKind::Posix, own(1), range(1, 1), 0),
        Err(LockError::TooManyLocks)
    );
    assert_eq!(locks, full);
    // Unlocking a whole record always works.
    locks
        .unlock(LockKind::Posix, own(1), range(0, 2), 0)
        .unwrap();
    assert_eq!(locks.holders().count(), LOCKS_PER_FILE_MAX - 1);
}

#[test]
fn a_grant_over_the_bound_fails_the_waiter() {
    let mut locks = FileLocks::new();
    let max = LOCKS_PER_FILE_MAX as u64;
    for i in 0..max - 1 {
        locks
            .set(posix(1, Write, 2 * i, 2 * i), WaitMode::NoWait, 0)
            .unwrap();
    }
    // Owner 2's write record fills the file.
    try_set(&mut locks, posix(2, Write, 10 * max, 10 * max));
    // Owner 1 waits for a read lock over it, which will need a record of its own.
    wait_set(&mut locks, posix(1, Read, 10 * max, 10 * max + 5), 10, 0);
    // Owner 2 downgrades to read (same record count): the waiter no longer conflicts, but
    // granting it would exceed the bound, so it leaves the queue with the error.
    let reply = wait_set(&mut locks, posix(2, Read, 10 * max, 10 * max), 99, 0);
    assert_eq!(reply.outcome, SetOutcome::Granted);
    assert_eq!(reply.grants.len(), 1);
    assert_eq!(reply.grants[0].waiter_id, 10);
    assert_eq!(reply.grants[0].result, Err(LockError::TooManyLocks));
    assert!(locks.waiters().next().is_none());
    assert_eq!(locks.holders().count(), LOCKS_PER_FILE_MAX);
}

#[test]
fn too_many_waiters_and_reused_waiter_ids() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, u64::MAX));
    for id in 0..WAITERS_PER_FILE_MAX as u64 {
        let reply = locks
            .set(
                posix(2 + id, Read, id, id),
                WaitMode::Wait { waiter_id: id },
                0,
            )
            .unwrap();
        assert_eq!(reply.outcome, SetOutcome::Queued);
    }
    locks.check_invariants().unwrap();
    let before = locks.clone();
    let err = locks
        .set(
            posix(5000, Read, 0, 0),
            WaitMode::Wait { waiter_id: 5000 },
            0,
        )
        .unwrap_err();
    assert_eq!(err, LockError::TooManyWaiters);
    assert_eq!(err.errno(), errno::ENOLCK);
    // A non-blocking request is unaffected by the full queue.
    assert_eq!(
        try_set(&mut locks, posix(5000, Read, 0, 0)),
        SetOutcome::WouldBlock
    );
    assert_eq!(locks, before);
    locks.cancel_waiter(0).unwrap();
    let err = locks
        .set(posix(5000, Read, 0, 0), WaitMode::Wait { waiter_id: 1 }, 0)
        .unwrap_err();
    assert_eq!(err, LockError::WaiterIdInUse(1));
    // A flock conversion refused (here for a reused waiter id) keeps the old lock.
    let mut locks = FileLocks::new();
    try_set(&mut locks, flock(1, Read));
    try_set(&mut locks, flock(2, Read));
    wait_set(&mut locks, flock(3, Write), 7, 0);
    assert_eq!(
        locks.set(flock(1, Write), WaitMode::Wait { waiter_id: 7 }, 0),
        Err(LockError::WaiterIdInUse(7))
    );
    assert_eq!(
        records(&locks, LockKind::Flock, own(1)),
        vec![(Read, 0, u64::MAX)]
    );
}

#[test]
fn serde_round_trip_and_range_validation_on_decode() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 99));
    try_set(&mut locks, posix(1, Read, 10, 19));
    try_set(&mut locks, flock(2, Read));
    wait_set(&mut locks, posix(3, Write, 0, u64::MAX), 30, 4);
    let config = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&locks, config).unwrap();
    let (decoded, _): (FileLocks, usize) =
        bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(decoded, locks);
    decoded.check_invariants().unwrap();
    // A reversed range does not decode.
    let bytes = bincode::serde::encode_to_vec((9u64, 3u64), config).unwrap();
    assert!(bincode::serde::decode_from_slice::<LockRange, _>(&bytes, config).is_err());
}

#[test]
fn check_invariants_catches_broken_states() {
    let mut locks = FileLocks::new();
    try_set(&mut locks, posix(1, Write, 0, 9));
    let config = bincode::config::standard();
    // Build broken states through serde, the only way in from outside.
    let held = *locks.holders().next().unwrap();
    let other = HeldLock {
        owner: own(2),
        ..held
    };
    let broken: (Vec<HeldLock>, Vec<Waiter>) = (vec![held, other], vec![]);
    let bytes = bincode::serde::encode_to_vec(&broken, config).unwrap();
    let (state, _): (FileLocks, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert!(
        state
            .check_invariants()
            .unwrap_err()
            .contains("conflicting")
    );
    let adjacent = HeldLock {
        range: range(10, 19),
        ..held
    };
    let broken: (Vec<HeldLock>, Vec<Waiter>) = (vec![held, adjacent], vec![]);
    let bytes = bincode::serde::encode_to_vec(&broken, config).unwrap();
    let (state, _): (FileLocks, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert!(state.check_invariants().unwrap_err().contains("merged"));
    let idle = Waiter {
        waiter_id: 1,
        owner: own(3),
        kind: LockKind::Posix,
        lock_type: Read,
        range: range(50, 59),
        pid: 0,
        queued_ms: 0,
    };
    let broken: (Vec<HeldLock>, Vec<Waiter>) = (vec![held], vec![idle]);
    let bytes = bincode::serde::encode_to_vec(&broken, config).unwrap();
    let (state, _): (FileLocks, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert!(
        state
            .check_invariants()
            .unwrap_err()
            .contains("blocked by nothing")
    );
}

// ---------------------------------------------------------------------------------------
// Reference model: one cell per offset 0..64 plus one cell for 64..=EOF, a type (or
// nothing) per (kind, owner) per cell, and a FIFO of waiters. Requests only use ranges
// that map exactly onto cells (within 0..64, or from s < 64 to EOF), so the model is exact
// about coverage; it knows nothing of records, splitting or merging.

const CELLS: usize = 65;

/// The cells of a range generated by the property test.
fn cells_of(range: LockRange) -> std::ops::RangeInclusive<usize> {
    let start = range.start() as usize;
    let end = if range.is_to_eof() {
        CELLS - 1
    } else {
        range.end() as usize
    };
    start..=end
}

#[derive(Clone, Debug, Default)]
struct Reference {
    cells: BTreeMap<(LockKind, Owner), [Option<LockType>; CELLS]>,
    waiters: Vec<Waiter>,
}

impl Reference {
    fn blockers(
        &self,
        kind: LockKind,
        owner: Owner,
        lock_type: LockType,
        range: LockRange,
    ) -> BTreeSet<Owner> {
        let cells = cells_of(if kind == LockKind::Flock {
            LockRange::WHOLE
        } else {
            range
        });
        let mut blockers = BTreeSet::new();
        for ((k, o), held) in &self.cells {
            if *k != kind || *o == owner {
                continue;
            }
            if cells
                .clone()
                .any(|c| held[c].is_some_and(|t| t == Write || lock_type == Write))
            {
                blockers.insert(*o);
            }
        }
        blockers
    }

    fn apply(&mut self, request: LockRequest) {
        let map = self
            .cells
            .entry((request.kind, request.owner))
            .or_insert([None; CELLS]);
        for c in cells_of(if request.kind == LockKind::Flock {
            LockRange::WHOLE
        } else {
            request.range
        }) {
            map[c] = Some(request.lock_type);
        }
    }

    fn clear(&mut self, kind: LockKind, owner: Owner, range: LockRange) {
        if let Some(map) = self.cells.get_mut(&(kind, owner)) {
            for c in cells_of(range) {
                map[c] = None;
            }
        }
    }

    /// Grant every waiter that conflicts with nothing, oldest first, restarting after
    /// every grant (no cleverness about downgrades).
    fn grant(&mut self) -> Vec<u64> {
        let mut granted = Vec::new();
        'scan: loop {
            for i in 0..self.waiters.len() {
                let w = self.waiters[i];
                if self
                    .blockers(w.kind, w.owner, w.lock_type, w.range)
                    .is_empty()
                {
                    self.waiters.remove(i);
                    self.apply(w.request());
                    granted.push(w.waiter_id);
                    continue 'scan;
                }
            }
            return granted;
        }
    }

    fn deadlock(&self, request: LockRequest) -> bool {
        let mut seen = BTreeSet::new();
        let mut pending: Vec<Owner> = self
            .blockers(
                request.kind,
                request.owner,
                request.lock_type,
                request.range,
            )
            .into_iter()
            .collect();
        while let Some(o) = pending.pop() {
            if o == request.owner {
                return true;
            }
            if !seen.insert(o) {
                continue;
            }
            for w in self
                .waiters
                .iter()
                .filter(|w| w.owner == o && w.kind == LockKind::Posix)
            {
                pending.extend(self.blockers(w.kind, w.owner, w.lock_type, w.range));
            }
        }
        false
    }

    fn set(&mut self, request: LockRequest, wait: WaitMode) -> (SetOutcome, Vec<u64>) {
        if self
            .blockers(
                request.kind,
                request.owner,
                request.lock_type,
                request.range,
            )
            .is_empty()
        {
            self.apply(request);
            return (SetOutcome::Granted, self.grant());
        }
        if let WaitMode::Wait { .. } = wait
            && request.kind == LockKind::Posix
            && self.deadlock(request)
        {
            return (SetOutcome::Deadlock, Vec::new());
        }
        if request.kind == LockKind::Flock {
            self.clear(LockKind::Flock, request.owner, LockRange::WHOLE);
        }
        let outcome = match wait {
            WaitMode::NoWait => SetOutcome::WouldBlock,
            WaitMode::Wait { waiter_id } => {
                self.waiters.push(Waiter {
                    waiter_id,
                    owner: request.owner,
                    kind: request.kind,
                    lock_type: request.lock_type,
                    range: if request.kind == LockKind::Flock {
                        LockRange::WHOLE
                    } else {
                        request.range
                    },
                    pid: request.pid,
                    queued_ms: 0,
                });
                SetOutcome::Queued
            }
        };
        (outcome, self.grant())
    }

    /// The coverage of `locks`, in the reference's terms (empty maps left out).
    fn coverage_of(locks: &FileLocks) -> BTreeMap<(LockKind, Owner), [Option<LockType>; CELLS]> {
        let mut cells = BTreeMap::new();
        for held in locks.holders() {
            let map = cells
                .entry((held.kind, held.owner))
                .or_insert([None; CELLS]);
            for c in cells_of(held.range) {
                assert_eq!(map[c], None, "overlap in {locks:?}");
                map[c] = Some(held.lock_type);
            }
            // Records must map onto whole cells.
            assert!(held.range.is_to_eof() || held.range.end() < (CELLS - 1) as u64);
        }
        cells
    }

    fn coverage(&self) -> BTreeMap<(LockKind, Owner), [Option<LockType>; CELLS]> {
        self.cells
            .iter()
            .filter(|(_, map)| map.iter().any(Option::is_some))
            .map(|(k, map)| (*k, *map))
            .collect()
    }
}

#[derive(Clone, Debug)]
enum ModelOp {
    /// A request, blocking or not.
    Set(LockRequest, bool),
    Unlock(LockKind, Owner, LockRange),
    Test(LockKind, Owner, LockType, LockRange),
    ReleaseOwner(LockKind, Owner),
    ReleaseSession(u64),
    Cancel(u64),
}

fn arb_owner() -> impl Strategy<Value = Owner> {
    // Four owners in two sessions.
    (0u64..4).prop_map(|n| Owner::new(n / 2, n))
}

/// Ranges that map onto the reference's cells.
pub(crate) fn arb_range() -> impl Strategy<Value = LockRange> {
    prop_oneof![
        8 => (0u64..64, 1u64..=16).prop_map(|(s, len)| range(s, (s + len - 1).min(63))),
        1 => (0u64..64).prop_map(LockRange::to_eof),
        1 => Just(LockRange::WHOLE),
    ]
}

fn arb_kind() -> impl Strategy<Value = LockKind> {
    prop_oneof![4 => Just(LockKind::Posix), 1 => Just(LockKind::Flock)]
}

fn arb_type() -> impl Strategy<Value = LockType> {
    prop_oneof![Just(Read), Just(Write)]
}

fn arb_model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        6 => (arb_kind(), arb_owner(), arb_type(), arb_range(), any::<bool>())
            .prop_map(|(kind, owner, lock_type, range, wait)| ModelOp::Set(
                LockRequest { kind, owner, lock_type, range, pid: owner.owner as u32 },
                wait,
            )),
        3 => (arb_kind(), arb_owner(), arb_range()).prop_map(|(k, o, r)| ModelOp::Unlock(k, o, r)),
        2 => (arb_kind(), arb_owner(), arb_type(), arb_range())
            .prop_map(|(k, o, t, r)| ModelOp::Test(k, o, t, r)),
        1 => (arb_kind(), arb_owner()).prop_map(|(k, o)| ModelOp::ReleaseOwner(k, o)),
        1 => (0u64..2).prop_map(ModelOp::ReleaseSession),
        1 => (0u64..80).prop_map(ModelOp::Cancel),
    ]
}

fn ids(grants: &[Grant]) -> Vec<u64> {
    grants
        .iter()
        .map(|g| {
            assert_eq!(g.result, Ok(()));
            g.waiter_id
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any sequence of operations, blocking ones included, keeps every invariant, and
    /// agrees with the cell-level reference on outcomes, grants (and their order), the
    /// waiter queue and the coverage of every owner.
    #[test]
    fn matches_cell_reference(ops in proptest::collection::vec(arb_model_op(), 1..80)) {
        let mut locks = FileLocks::new();
        let mut reference = Reference::default();
        for (step, op) in ops.into_iter().enumerate() {
            let now = step as u64;
            match op {
                ModelOp::Set(request, wait) => {
                    // Waiter ids are unique: the step number.
                    let wait = if wait { WaitMode::Wait { waiter_id: now } } else { WaitMode::NoWait };
                    let reply = locks.set(request, wait, now).unwrap();
                    let (outcome, granted) = reference.set(request, wait);
                    prop_assert_eq!(reply.outcome, outcome);
                    prop_assert_eq!(ids(&reply.grants), granted);
                }
                ModelOp::Unlock(kind, owner, range) => {
                    let grants = locks.unlock(kind, owner, range, now).unwrap();
                    reference.clear(kind, owner, if kind == LockKind::Flock { LockRange::WHOLE } else { range });
                    prop_assert_eq!(ids(&grants), reference.grant());
                }
                ModelOp::Test(kind, owner, lock_type, range) => {
                    let conflict = locks.test(kind, owner, lock_type, range);
                    let blockers = reference.blockers(kind, owner, lock_type, range);
                    prop_assert_eq!(conflict.is_some(), !blockers.is_empty());
                    if let Some(conflict) = conflict {
                        prop_assert!(blockers.contains(&conflict.owner));
                        let probed = if kind == LockKind::Flock { LockRange::WHOLE } else { range };
                        prop_assert!(conflict.range.overlaps(probed));
                    }
                }
                ModelOp::ReleaseOwner(kind, owner) => {
                    let released = locks.release_owner(kind, owner, now);
                    reference.clear(kind, owner, LockRange::WHOLE);
                    let dropped: Vec<u64> = reference
                        .waiters
                        .iter()
                        .filter(|w| w.kind == kind && w.owner == owner)
                        .map(|w| w.waiter_id)
                        .collect();
                    reference.waiters.retain(|w| !(w.kind == kind && w.owner == owner));
                    prop_assert_eq!(
                        released.dropped_waiters.iter().map(|w| w.waiter_id).collect::<Vec<_>>(),
                        dropped
                    );
                    prop_assert_eq!(ids(&released.grants), reference.grant());
                }
                ModelOp::ReleaseSession(session) => {
                    let released = locks.release_session(session, now);
                    reference.cells.retain(|(_, o), _| o.session != session);
                    let dropped: Vec<u64> = reference
                        .waiters
                        .iter()
                        .filter(|w| w.owner.session == session)
                        .map(|w| w.waiter_id)
                        .collect();
                    reference.waiters.retain(|w| w.owner.session != session);
                    prop_assert_eq!(
                        released.dropped_waiters.iter().map(|w| w.waiter_id).collect::<Vec<_>>(),
                        dropped
                    );
                    prop_assert_eq!(ids(&released.grants), reference.grant());
                }
                ModelOp::Cancel(id) => {
                    let existed = reference.waiters.iter().any(|w| w.waiter_id == id);
                    reference.waiters.retain(|w| w.waiter_id != id);
                    prop_assert_eq!(locks.cancel_waiter(id).is_some(), existed);
                }
            }
            locks.check_invariants().map_err(TestCaseError::fail)?;
            prop_assert_eq!(Reference::coverage_of(&locks), reference.coverage());
            prop_assert_eq!(
                locks.waiters().map(|w| (w.waiter_id, w.owner, w.kind, w.lock_type, w.range)).collect::<Vec<_>>(),
                reference.waiters.iter().map(|w| (w.waiter_id, w.owner, w.kind, w.lock_type, w.range)).collect::<Vec<_>>()
            );
            prop_assert_eq!(locks.is_empty(), reference.coverage().is_empty() && reference.waiters.is_empty());
        }
    }
}
