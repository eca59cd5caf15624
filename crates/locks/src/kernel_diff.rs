//! Differential tests against the Linux kernel's own lock implementation.
//!
//! Random sequences of non-blocking operations by a few owners go both to a [`FileLocks`]
//! and to a real temporary file, on which every owner is a separate `open()`: POSIX
//! operations use open-file-description locks (`F_OFD_SETLK`/`F_OFD_GETLK`), which belong
//! to the open file description, so that the OFDs of one process conflict exactly as
//! distinct POSIX owners do; flock operations use `flock(2)` with `LOCK_NB` on the same
//! descriptions. After every operation the test compares
//! - whether a set succeeded or failed with `EAGAIN`;
//! - the `F_GETLK` answer: whether there is a conflict, and that the lock the kernel
//!   reports is one of the model's conflicting records (type and exact range; when only
//!   one record conflicts this is an exact match);
//! - every owner's exact record list (kind, type, start, end of each record), read from
//!   the kernel's `/proc/self/fdinfo/<fd>`, which checks splitting and merging.
//!
//! At the end, every owner and a fresh probe description ask `F_GETLK` for a read and a
//! write lock at each offset 0..64 and over 64..EOF, and the probe tries a shared and an
//! exclusive `flock`, each compared with the model's `test`.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;

use crate::LockType::{Read, Write};
use crate::tests::arb_range;
use crate::*;

/// How many owners (open file descriptions) take part.
const OWNERS: usize = 4;

/// The model's owner for description `index`; the probe is index `OWNERS`.
fn owner(index: usize) -> Owner {
    Owner::new(1, index as u64)
}

/// A temporary file opened once per owner plus once for probing; the name is removed at
/// once (locks work on the open inode).
struct Kernel {
    owners: Vec<File>,
    probe: File,
}

impl Kernel {
    fn new() -> Kernel {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "plait-locks-diff-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let open = |create: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(create)
                .open(&path)
                .unwrap()
        };
        let first = open(true);
        let mut owners = vec![first];
        owners.extend((1..OWNERS).map(|_| open(false)));
        let probe = open(false);
        std::fs::remove_file(&path).unwrap();
        Kernel { owners, probe }
    }

    /// The kernel's lock records held by owner `index` as (kind, type, start, end),
    /// sorted, from the `lock:` lines of `/proc/self/fdinfo/<fd>` (one consistent
    /// snapshot of that description's locks, unlike `/proc/locks`, which can repeat or
    /// skip lines while other files' locks change).
    fn records(&self, index: usize) -> Vec<(LockKind, LockType, u64, u64)> {
        let fd = self.owners[index].as_raw_fd();
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let mut records = Vec::new();
        for line in text.lines().filter(|line| line.starts_with("lock:")) {
            // "lock: N: CLASS ADVISORY TYPE PID DEV:INO START END"
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 9, "unexpected fdinfo line {line}");
            let kind = match fields[2] {
                "OFDLCK" => LockKind::Posix,
                "FLOCK" => LockKind::Flock,
                other => panic!("unexpected lock class {other} in {line}"),
            };
            let lock_type = match fields[4] {
                "READ" => Read,
                "WRITE" => Write,
                other => panic!("unexpected lock type {other} in {line}"),
            };
            let start: u64 = fields[7].parse().unwrap();
            let end = match fields[8] {
                "EOF" => u64::MAX,
                n => n.parse().unwrap(),
            };
            records.push((kind, lock_type, start, end));
        }
        records.sort();
        records
    }
}

fn l_type(lock_type: LockType) -> libc::c_short {
    (match lock_type {
        Read => libc::F_RDLCK,
        Write => libc::F_WRLCK,
    }) as libc::c_short
}

/// A `struct flock` for an OFD request (`l_pid` must be 0).
fn flock_struct(l_type: libc::c_short, range: LockRange) -> libc::flock {
    // SAFETY: `flock` is plain integers; all zeroes is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = range.start() as libc::off_t;
    fl.l_len = if range.is_to_eof() {
        0
    } else {
        (range.end() - range.start() + 1) as libc::off_t
    };
    fl.l_pid = 0;
    fl
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// `F_OFD_SETLK` of `l_type` (`F_UNLCK` to unlock); the errno on failure.
fn ofd_setlk(file: &File, l_type: libc::c_short, range: LockRange) -> Result<(), i32> {
    let fl = flock_struct(l_type, range);
    // SAFETY: a valid descriptor and a pointer to a live `flock`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// `F_OFD_GETLK`: the conflicting lock the kernel reports, as (type, range).
fn ofd_getlk(file: &File, lock_type: LockType, range: LockRange) -> Option<(LockType, LockRange)> {
    let mut fl = flock_struct(l_type(lock_type), range);
    // SAFETY: a valid descriptor and a pointer to a live, writable `flock`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(rc, 0, "F_OFD_GETLK failed: errno {}", last_errno());
    let found = match i32::from(fl.l_type) {
        libc::F_UNLCK => return None,
        libc::F_RDLCK => Read,
        libc::F_WRLCK => Write,
        other => panic!("F_OFD_GETLK returned l_type {other}"),
    };
    let start = fl.l_start as u64;
    let end = if fl.l_len == 0 {
        u64::MAX
    } else {
        start + fl.l_len as u64 - 1
    };
    Some((found, LockRange::new(start, end).unwrap()))
}

/// `flock(2)` with `operation`; the errno on failure.
fn bsd_flock(file: &File, operation: libc::c_int) -> Result<(), i32> {
    // SAFETY: a valid descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

fn flock_op(lock_type: LockType) -> libc::c_int {
    match lock_type {
        Read => libc::LOCK_SH,
        Write => libc::LOCK_EX,
    }
}

/// One operation of one owner (an index below `OWNERS`).
#[derive(Clone, Copy, Debug)]
enum KernelOp {
    Set(usize, LockKind, LockType, LockRange),
    Unlock(usize, LockKind, LockRange),
    /// `F_GETLK` (POSIX only; flock has no test operation).
    Test(usize, LockType, LockRange),
}

fn arb_type() -> impl Strategy<Value = LockType> {
    prop_oneof![Just(Read), Just(Write)]
}

fn arb_op(with_flock: bool) -> BoxedStrategy<KernelOp> {
    let kind = if with_flock {
        prop_oneof![3 => Just(LockKind::Posix), 1 => Just(LockKind::Flock)].boxed()
    } else {
        Just(LockKind::Posix).boxed()
    };
    prop_oneof![
        6 => (0..OWNERS, kind.clone(), arb_type(), arb_range())
            .prop_map(|(o, k, t, r)| KernelOp::Set(o, k, t, r)),
        3 => (0..OWNERS, kind, arb_range()).prop_map(|(o, k, r)| KernelOp::Unlock(o, k, r)),
        2 => (0..OWNERS, arb_type(), arb_range()).prop_map(|(o, t, r)| KernelOp::Test(o, t, r)),
    ]
    .boxed()
}

/// Compare `F_OFD_GETLK` on `file` with the model's `test` for `who`.
fn compare_getlk(
    file: &File,
    model: &FileLocks,
    who: Owner,
    lock_type: LockType,
    range: LockRange,
) -> Result<(), TestCaseError> {
    let kernel = ofd_getlk(file, lock_type, range);
    let candidates: Vec<(LockType, LockRange)> = model
        .holders()
        .filter(|h| {
            h.kind == LockKind::Posix
                && h.owner != who
                && h.range.overlaps(range)
                && (h.lock_type == Write || lock_type == Write)
        })
        .map(|h| (h.lock_type, h.range))
        .collect();
    let answer = model.test(LockKind::Posix, who, lock_type, range);
    prop_assert_eq!(
        kernel.is_some(),
        answer.is_some(),
        "GETLK {:?} {:?} by {:?}: kernel {:?}, model {:?}",
        lock_type,
        range,
        who,
        kernel,
        answer
    );
    if let Some(found) = kernel {
        prop_assert!(
            candidates.contains(&found),
            "GETLK {:?} {:?} by {:?}: kernel reports {:?}, model's conflicts are {:?}",
            lock_type,
            range,
            who,
            found,
            candidates
        );
    }
    if let Some(answer) = answer {
        prop_assert!(candidates.contains(&(answer.lock_type, answer.range)));
    }
    Ok(())
}

/// The model's records of `who` as the kernel lists them, sorted.
fn model_records(model: &FileLocks, who: Owner) -> Vec<(LockKind, LockType, u64, u64)> {
    let mut records: Vec<_> = model
        .holders()
        .filter(|h| h.owner == who)
        .map(|h| (h.kind, h.lock_type, h.range.start(), h.range.end()))
        .collect();
    records.sort();
    records
}

/// Run `ops` on the kernel and the model, comparing after each step and at the end.
fn run(ops: &[KernelOp]) -> Result<(), TestCaseError> {
    let kernel = Kernel::new();
    let mut model = FileLocks::new();
    for (step, &op) in ops.iter().enumerate() {
        let now = step as u64;
        match op {
            KernelOp::Set(index, kind, lock_type, range) => {
                let file = &kernel.owners[index];
                let in_kernel = match kind {
                    LockKind::Posix => ofd_setlk(file, l_type(lock_type), range),
                    LockKind::Flock => bsd_flock(file, flock_op(lock_type) | libc::LOCK_NB),
                };
                let request = LockRequest {
                    kind,
                    owner: owner(index),
                    lock_type,
                    range,
                    pid: 0,
                };
                let reply = model.set(request, WaitMode::NoWait, now).unwrap();
                prop_assert!(reply.grants.is_empty());
                let agree = matches!(
                    (in_kernel, reply.outcome),
                    (Ok(()), SetOutcome::Granted) | (Err(libc::EAGAIN), SetOutcome::WouldBlock)
                );
                prop_assert!(
                    agree,
                    "step {}: {:?}: kernel {:?}, model {:?}",
                    step,
                    op,
                    in_kernel,
                    reply.outcome
                );
            }
            KernelOp::Unlock(index, kind, range) => {
                let file = &kernel.owners[index];
                let in_kernel = match kind {
                    LockKind::Posix => ofd_setlk(file, libc::F_UNLCK as libc::c_short, range),
                    LockKind::Flock => bsd_flock(file, libc::LOCK_UN),
                };
                prop_assert_eq!(in_kernel, Ok(()));
                let grants = model.unlock(kind, owner(index), range, now).unwrap();
                prop_assert!(grants.is_empty());
            }
            KernelOp::Test(index, lock_type, range) => {
                compare_getlk(
                    &kernel.owners[index],
                    &model,
                    owner(index),
                    lock_type,
                    range,
                )?;
            }
        }
        model.check_invariants().map_err(TestCaseError::fail)?;
        for index in 0..OWNERS {
            prop_assert_eq!(
                kernel.records(index),
                model_records(&model, owner(index)),
                "records of owner {} after step {}: {:?}",
                index,
                step,
                op
            );
        }
    }
    let probes = (0..64)
        .map(|offset| LockRange::new(offset, offset).unwrap())
        .chain([LockRange::to_eof(64)]);
    for range in probes {
        for lock_type in [Read, Write] {
            for (index, file) in kernel.owners.iter().enumerate() {
                compare_getlk(file, &model, owner(index), lock_type, range)?;
            }
            compare_getlk(&kernel.probe, &model, owner(OWNERS), lock_type, range)?;
        }
    }
    for lock_type in [Read, Write] {
        let in_kernel = bsd_flock(&kernel.probe, flock_op(lock_type) | libc::LOCK_NB);
        if in_kernel.is_ok() {
            prop_assert_eq!(bsd_flock(&kernel.probe, libc::LOCK_UN), Ok(()));
        } else {
            prop_assert_eq!(in_kernel, Err(libc::EWOULDBLOCK));
        }
        let free = model
            .test(LockKind::Flock, owner(OWNERS), lock_type, LockRange::WHOLE)
            .is_none();
        prop_assert_eq!(in_kernel.is_ok(), free, "flock probe {:?}", lock_type);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// POSIX (OFD) locks only: outcomes, GETLK answers and record lists match Linux.
    #[test]
    fn posix_matches_kernel(ops in proptest::collection::vec(arb_op(false), 1..=60)) {
        run(&ops)?;
    }

    /// POSIX and flock locks mixed on one file: the namespaces stay independent, and
    /// flock outcomes (including conversions that fail and drop the old lock) match
    /// Linux.
    #[test]
    fn posix_and_flock_match_kernel(ops in proptest::collection::vec(arb_op(true), 1..=60)) {
        run(&ops)?;
    }
}

/// Hand-picked cases first, so that a failure names the semantic point.
#[test]
fn fixed_sequences_match_kernel() {
    let r = |s, e| LockRange::new(s, e).unwrap();
    let cases: Vec<Vec<KernelOp>> = vec![
        // Split a write by a read in the middle, then merge it back.
        vec![
            KernelOp::Set(0, LockKind::Posix, Write, r(0, 40)),
            KernelOp::Set(0, LockKind::Posix, Read, r(10, 19)),
            KernelOp::Test(1, Read, r(5, 15)),
            KernelOp::Set(0, LockKind::Posix, Write, r(10, 19)),
        ],
        // Adjacent same-type ranges merge; to-EOF.
        vec![
            KernelOp::Set(0, LockKind::Posix, Read, r(0, 9)),
            KernelOp::Set(0, LockKind::Posix, Read, r(10, 19)),
            KernelOp::Set(1, LockKind::Posix, Write, LockRange::to_eof(30)),
            KernelOp::Unlock(1, LockKind::Posix, LockRange::to_eof(40)),
            KernelOp::Test(2, Write, LockRange::WHOLE),
        ],
        // Upgrade refused over a shared read; flock conversion failure drops the lock.
        vec![
            KernelOp::Set(0, LockKind::Posix, Read, r(0, 9)),
            KernelOp::Set(1, LockKind::Posix, Read, r(5, 9)),
            KernelOp::Set(0, LockKind::Posix, Write, r(0, 9)),
            KernelOp::Set(0, LockKind::Flock, Read, LockRange::WHOLE),
            KernelOp::Set(1, LockKind::Flock, Read, LockRange::WHOLE),
            KernelOp::Set(0, LockKind::Flock, Write, LockRange::WHOLE),
            KernelOp::Set(1, LockKind::Flock, Write, LockRange::WHOLE),
        ],
    ];
    for ops in cases {
        run(&ops).unwrap();
    }
}
