//! The state machine's read interface over RocksDB.

use plait_meta::{KvRead, StoreError as MetaStoreError};
use rocksdb::{DB, ReadOptions, SnapshotWithThreadMode};

use super::{CF_SM, CF_STATE, Db, StoreError};

/// A read view of the `state` column family: either live (used while applying, which is
/// serialized) or pinned to a RocksDB snapshot (used by concurrent queries).
pub struct DbView<'a> {
    db: &'a DB,
    cf: &'a rocksdb::ColumnFamily,
    snapshot: Option<SnapshotWithThreadMode<'a, DB>>,
}

impl<'a> DbView<'a> {
    /// A view of the current state, seeing every write as it lands.
    pub(crate) fn live(db: &'a Db) -> Result<Self, StoreError> {
        Ok(Self {
            db: db.raw(),
            cf: db.cf(CF_STATE)?,
            snapshot: None,
        })
    }

    /// A view pinned to the state as of now.
    pub(crate) fn snapshot(db: &'a Db) -> Result<Self, StoreError> {
        Ok(Self {
            db: db.raw(),
            cf: db.cf(CF_STATE)?,
            snapshot: Some(db.raw().snapshot()),
        })
    }

    /// Reads `key` of the `sm` column family (applied log id, membership) as of this
    /// view, so that it matches the state the view sees.
    pub(crate) fn sm_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let cf = self
            .db
            .cf_handle(CF_SM)
            .ok_or(StoreError::MissingCf(CF_SM))?;
        Ok(self.db.get_cf_opt(cf, key, &self.read_opts())?)
    }

    fn read_opts(&self) -> ReadOptions {
        let mut ro = ReadOptions::default();
        if let Some(s) = &self.snapshot {
            ro.set_snapshot(s);
        }
        ro
    }

    /// Read options for an iterator confined to keys starting with `prefix`: bounding
    /// the iterator lets RocksDB stop at the prefix instead of walking the tombstones
    /// that lie past it.
    fn prefix_opts(&self, prefix: &[u8]) -> ReadOptions {
        let mut ro = self.read_opts();
        ro.set_iterate_lower_bound(prefix.to_vec());
        if let Some(upper) = prefix_successor(prefix) {
            ro.set_iterate_upper_bound(upper);
        }
        ro
    }
}

/// The smallest key greater than every key starting with `prefix`, if one exists.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

fn io(e: rocksdb::Error) -> MetaStoreError {
    MetaStoreError::Io(e.to_string())
}

impl KvRead for DbView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaStoreError> {
        self.db
            .get_cf_opt(self.cf, key, &self.read_opts())
            .map_err(io)
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, MetaStoreError> {
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf, self.prefix_opts(prefix));
        match after {
            Some(a) => {
                it.seek(a);
                if it.valid() && it.key() == Some(a) {
                    it.next();
                }
            }
            None => it.seek(prefix),
        }
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
            // Stepping on past the last wanted entry would walk the tombstones behind it.
            if out.len() == limit {
                break;
            }
            it.next();
        }
        it.status().map_err(io)?;
        Ok(out)
    }

    fn seek_prev(
        &self,
        prefix: &[u8],
        key: &[u8],
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, MetaStoreError> {
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf, self.prefix_opts(prefix));
        it.seek_for_prev(key);
        it.status().map_err(io)?;
        if !it.valid() {
            return Ok(None);
        }
        match (it.key(), it.value()) {
            (Some(k), Some(v)) if k.starts_with(prefix) => Ok(Some((k.to_vec(), v.to_vec()))),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_successor;

    #[test]
    fn successor_of_prefixes() {
        assert_eq!(prefix_successor(b"E\x00\x01"), Some(b"E\x00\x02".to_vec()));
        assert_eq!(prefix_successor(b"E\xff\xff"), Some(b"F".to_vec()));
        assert_eq!(prefix_successor(b"\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
