//! Noticing that a process blocked in a lock wait got a signal.
//!
//! fuser 0.18 answers FUSE_INTERRUPT with ENOSYS, after which the kernel no longer sends
//! interrupts and a process blocked in F_SETLKW or flock waits for our reply whatever
//! signal it gets (even SIGKILL cannot end it before we answer). So while a lock request
//! waits, the mount looks at the requesting thread's pending signals in
//! `/proc/<tid>/status` and answers EINTR once one is deliverable.

/// The signal number of SIGKILL, which can be neither blocked nor ignored.
const SIGKILL: u32 = 9;

/// A hexadecimal signal mask field (`SigPnd:`, `SigBlk:`...) of a status file; 0 if
/// absent or unreadable.
fn mask(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether thread `tid` has a signal pending that it neither blocks nor ignores (or a
/// SIGKILL), or no longer exists: either way its lock wait should end.
pub(crate) fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    deliverable(&status)
}

fn deliverable(status: &str) -> bool {
    let pending = mask(status, "SigPnd:") | mask(status, "ShdPnd:");
    let kill = 1u64 << (SIGKILL - 1);
    pending & kill != 0 || pending & !mask(status, "SigBlk:") & !mask(status, "SigIgn:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pnd: &str, shd: &str, blk: &str, ign: &str) -> String {
        format!(
            "Name:\tx\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t{ign}\nSigCgt:\t0\n"
        )
    }

    #[test]
    fn only_deliverable_signals_count() {
        assert!(!deliverable(&status("0", "0", "0", "0")));
        // SIGINT (2) pending for the process.
        assert!(deliverable(&status("0", "2", "0", "0")));
        // ... but blocked, or ignored.
        assert!(!deliverable(&status("0", "2", "2", "0")));
        assert!(!deliverable(&status("2", "0", "0", "2")));
        // SIGKILL always counts.
        assert!(deliverable(&status("100", "0", "ffffffffffffffff", "0")));
    }

    #[test]
    fn a_thread_that_is_gone_counts_as_interrupted() {
        assert!(signal_pending(u32::MAX - 1));
    }
}
