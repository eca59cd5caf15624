//! A digest of the applied metadata state, for checking that replicas did not diverge.

use openraft::LogId;
use plait_meta::KvRead;

use super::state_machine::KEY_LAST_APPLIED;
use super::{Db, DbView, StoreError, dec};

/// Entries read per page while hashing, bounding the memory of one pass.
const DIGEST_PAGE_ENTRIES: usize = 4096;

/// Last applied index, number of keys and blake3 (hex) of the `state` column family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Index of the last applied log entry (0 before the first).
    pub last_applied: u64,
    /// Keys in the state.
    pub entries: u64,
    /// blake3 over every (key, value) in key order, each part prefixed with its length
    /// (u64 BE), then `last_applied` (u64 BE).
    pub hex: String,
}

impl Db {
    /// Hashes the state machine's state and its applied index, both read from one RocksDB
    /// snapshot (they are written in one batch), so that nodes at the same index must
    /// report the same digest. Blocking: walks the whole state; run it off the async
    /// workers.
    pub fn state_digest(&self) -> Result<Digest, StoreError> {
        let view = DbView::snapshot(self)?;
        let last_applied: Option<LogId<u64>> = match view.sm_get(KEY_LAST_APPLIED)? {
            Some(bytes) => dec(&bytes)?,
            None => None,
        };
        let last_applied = last_applied.map(|l| l.index).unwrap_or(0);
        let mut hasher = blake3::Hasher::new();
        let mut entries = 0u64;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = view.scan(b"", after.as_deref(), DIGEST_PAGE_ENTRIES)?;
            for (k, v) in &page {
                hasher.update(&(k.len() as u64).to_be_bytes());
                hasher.update(k);
                hasher.update(&(v.len() as u64).to_be_bytes());
                hasher.update(v);
            }
            entries += page.len() as u64;
            if page.len() < DIGEST_PAGE_ENTRIES {
                break;
            }
            after = page.last().map(|(k, _)| k.clone());
        }
        hasher.update(&last_applied.to_be_bytes());
        Ok(Digest {
            last_applied,
            entries,
            hex: hasher.finalize().to_hex().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::CF_STATE;
    use super::*;

    fn put_all(db: &Db, pairs: &[(Vec<u8>, Vec<u8>)]) {
        let cf = db.cf(CF_STATE).unwrap();
        for (k, v) in pairs {
            db.raw().put_cf(cf, k, v).unwrap();
        }
    }

    /// More keys than one page, so that paging is exercised.
    fn pairs() -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..DIGEST_PAGE_ENTRIES as u32 + 700)
            .map(|i| (format!("I{i:08}").into_bytes(), i.to_be_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn same_state_same_digest_and_any_change_shows() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (Db::open(d1.path()).unwrap(), Db::open(d2.path()).unwrap());
        let empty = a.state_digest().unwrap();
        assert_eq!((empty.last_applied, empty.entries), (0, 0));

        let mut p = pairs();
        put_all(&a, &p);
        p.reverse();
        put_all(&b, &p);
        let (da, db) = (a.state_digest().unwrap(), b.state_digest().unwrap());
        assert_eq!(da, db, "insertion order must not matter");
        assert_eq!(da.entries, p.len() as u64);
        assert_ne!(da.hex, empty.hex);

        // One changed value, one missing key: both change the digest.
        let cf = b.cf(CF_STATE).unwrap();
        b.raw().put_cf(cf, b"I00000007", b"x").unwrap();
        assert_ne!(b.state_digest().unwrap().hex, da.hex);
        b.raw()
            .put_cf(cf, b"I00000007", 7u32.to_be_bytes())
            .unwrap();
        assert_eq!(b.state_digest().unwrap(), da);
        b.raw().delete_cf(cf, b"I00004000").unwrap();
        assert_ne!(b.state_digest().unwrap().hex, da.hex);
    }
}
