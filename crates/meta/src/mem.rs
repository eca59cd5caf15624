//! An in-memory state: the reference [`KvRead`] for tests, and a convenient container when
//! building or checking snapshots.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::{KvEntry, KvRead, Mutation, StoreError};

/// An ordered in-memory key-value state. Reads never fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemKv {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemKv {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `mutations` in order, as the node writes one applied entry's batch.
    pub fn apply_mutations(&mut self, mutations: &[Mutation]) {
        for m in mutations {
            match m {
                Mutation::Put(k, v) => {
                    self.map.insert(k.clone(), v.clone());
                }
                Mutation::Delete(k) => {
                    self.map.remove(k);
                }
            }
        }
    }

    /// All entries in ascending key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.map.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl FromIterator<(Vec<u8>, Vec<u8>)> for MemKv {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(iter: I) -> Self {
        Self {
            map: iter.into_iter().collect(),
        }
    }
}

impl KvRead for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        Ok(self
            .map
            .range::<[u8], _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn seek_prev(&self, prefix: &[u8], key: &[u8]) -> Result<Option<KvEntry>, StoreError> {
        if key < prefix {
            return Ok(None);
        }
        Ok(self
            .map
            .range::<[u8], _>((Bound::Included(prefix), Bound::Included(key)))
            .rev()
            .find(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MemKv {
        [&b"a"[..], b"b1", b"b2", b"b3", b"c"]
            .iter()
            .map(|k| (k.to_vec(), k.to_vec()))
            .collect()
    }

    #[test]
    fn scan_respects_prefix_after_and_limit() {
        let kv = sample();
        let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(kv.scan(b"b", None, 10).unwrap()),
            vec![b"b1".to_vec(), b"b2".to_vec(), b"b3".to_vec()]
        );
        assert_eq!(
            keys(kv.scan(b"b", Some(b"b1"), 1).unwrap()),
            vec![b"b2".to_vec()]
        );
        assert!(kv.scan(b"b", Some(b"b3"), 10).unwrap().is_empty());
        assert!(kv.scan(b"b", None, 0).unwrap().is_empty());
    }

    #[test]
    fn seek_prev_stays_in_prefix() {
        let kv = sample();
        assert_eq!(kv.seek_prev(b"b", b"b2").unwrap().unwrap().0, b"b2");
        assert_eq!(kv.seek_prev(b"b", b"b25").unwrap().unwrap().0, b"b2");
        assert_eq!(kv.seek_prev(b"b", b"bz").unwrap().unwrap().0, b"b3");
        assert_eq!(kv.seek_prev(b"b", b"b0").unwrap(), None);
        assert_eq!(kv.seek_prev(b"b", b"a").unwrap(), None);
    }

    #[test]
    fn mutations_apply_in_order() {
        let mut kv = MemKv::new();
        kv.apply_mutations(&[
            Mutation::Put(b"k".to_vec(), b"1".to_vec()),
            Mutation::Delete(b"k".to_vec()),
            Mutation::Put(b"j".to_vec(), b"2".to_vec()),
        ]);
        assert_eq!(kv.len(), 1);
        assert_eq!(kv.get(b"j").unwrap(), Some(b"2".to_vec()));
    }
}
