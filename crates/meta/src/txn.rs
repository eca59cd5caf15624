//! An overlay over a read view that records the writes of one op and serves reads through
//! them, so that an op sees its own earlier writes (read-your-writes) before anything is
//! committed.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use crate::{KvEntry, KvRead, Mutation, StoreError};

/// Base entries fetched per page while merging a scan with the overlay.
const SCAN_PAGE_MAX: usize = 1024;

/// Bytes of 0xff appended when stepping below a key that ends in a non-zero byte; longer
/// than any key this crate writes (at most 1 + 8 + 255 bytes), so no real key falls
/// between the probe and the key it steps below.
const PREDECESSOR_PAD_BYTES: usize = 512;

/// Writes of one op over a read-only base. `None` in `writes` is a delete.
pub(crate) struct Txn<'a, R: KvRead> {
    base: &'a R,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a, R: KvRead> Txn<'a, R> {
    /// An empty overlay over `base`.
    pub fn new(base: &'a R) -> Self {
        Self {
            base,
            writes: BTreeMap::new(),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The recorded writes, in ascending key order.
    pub fn into_mutations(self) -> Vec<Mutation> {
        self.writes
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => Mutation::Put(k, v),
                None => Mutation::Delete(k),
            })
            .collect()
    }

    /// Overlay entries with `prefix` and key > `after`, ascending.
    fn overlay_from<'s>(
        &'s self,
        prefix: &'s [u8],
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = (&'s Vec<u8>, &'s Option<Vec<u8>>)> + 's {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        self.writes
            .range::<[u8], _>((start, Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// The greatest live overlay entry <= `key` with `prefix` (`key` >= `prefix`).
    fn overlay_prev(&self, prefix: &[u8], key: &[u8]) -> Option<KvEntry> {
        self.writes
            .range::<[u8], _>((Bound::Included(prefix), Bound::Included(key)))
            .rev()
            .filter(|(k, _)| k.starts_with(prefix))
            .find_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
    }

    /// The greatest base entry <= `key` with `prefix` that the overlay does not shadow.
    fn base_prev(&self, prefix: &[u8], key: &[u8]) -> Result<Option<KvEntry>, StoreError> {
        let mut probe = key.to_vec();
        // Each round steps strictly below a distinct overlay key, so this terminates.
        for _ in 0..=self.writes.len() {
            let Some((k, v)) = self.base.seek_prev(prefix, &probe)? else {
                return Ok(None);
            };
            if !self.writes.contains_key(&k) {
                return Ok(Some((k, v)));
            }
            match predecessor(&k) {
                Some(p) if p.starts_with(prefix) => probe = p,
                _ => return Ok(None),
            }
        }
        Err(StoreError::Corrupt(
            "seek_prev of the base store does not move backwards".into(),
        ))
    }
}

/// A key below `key` with no key of this crate's lengths strictly between them, or `None`
/// for the empty key.
fn predecessor(key: &[u8]) -> Option<Vec<u8>> {
    let (&last, head) = key.split_last()?;
    let mut p = head.to_vec();
    if last > 0 {
        p.push(last - 1);
        p.resize(p.len() + PREDECESSOR_PAD_BYTES, 0xff);
    }
    Some(p)
}

/// Pages through the base's entries for one scan.
struct BasePages<'b, R: KvRead> {
    base: &'b R,
    prefix: &'b [u8],
    cursor: Option<Vec<u8>>,
    page: usize,
    buf: VecDeque<KvEntry>,
    done: bool,
}

impl<R: KvRead> BasePages<'_, R> {
    /// The next base entry, without consuming it.
    fn peek(&mut self) -> Result<Option<&KvEntry>, StoreError> {
        if self.buf.is_empty() && !self.done {
            let got = self
                .base
                .scan(self.prefix, self.cursor.as_deref(), self.page)?;
            self.done = got.len() < self.page;
            if let Some((k, _)) = got.last() {
                self.cursor = Some(k.clone());
            }
            self.buf.extend(got);
        }
        Ok(self.buf.front())
    }

    fn pop(&mut self) -> Option<KvEntry> {
        self.buf.pop_front()
    }
}

impl<R: KvRead> KvRead for Txn<'_, R> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        let mut out = Vec::new();
        let mut overlay = self.overlay_from(prefix, after).peekable();
        let mut base = BasePages {
            base: self.base,
            prefix,
            cursor: after.map(<[u8]>::to_vec),
            page: limit.clamp(1, SCAN_PAGE_MAX),
            buf: VecDeque::new(),
            done: limit == 0,
        };
        while out.len() < limit {
            let order = {
                let base_key = base.peek()?.map(|(k, _)| k.as_slice());
                let over_key = overlay.peek().map(|(k, _)| k.as_slice());
                match (base_key, over_key) {
                    (None, None) => break,
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(b), Some(o)) => b.cmp(o),
                }
            };
            if order == Ordering::Less {
                out.extend(base.pop());
                continue;
            }
            if order == Ordering::Equal {
                base.pop(); // shadowed by the overlay
            }
            if let Some((k, Some(v))) = overlay.next() {
                out.push((k.clone(), v.clone()));
            }
        }
        Ok(out)
    }

    fn seek_prev(&self, prefix: &[u8], key: &[u8]) -> Result<Option<KvEntry>, StoreError> {
        if key < prefix {
            return Ok(None);
        }
        let over = self.overlay_prev(prefix, key);
        let base = self.base_prev(prefix, key)?;
        Ok(match (over, base) {
            (Some(o), Some(b)) => Some(if o.0 >= b.0 { o } else { b }),
            (o, b) => o.or(b),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemKv;
    use proptest::prelude::*;

    fn kv(entries: &[(&[u8], &[u8])]) -> MemKv {
        let mut m = MemKv::default();
        let muts: Vec<_> = entries
            .iter()
            .map(|(k, v)| Mutation::Put(k.to_vec(), v.to_vec()))
            .collect();
        m.apply_mutations(&muts);
        m
    }

    #[test]
    fn reads_see_own_writes_and_deletes() {
        let base = kv(&[(b"a1", b"x"), (b"a2", b"y"), (b"a3", b"z")]);
        let mut t = Txn::new(&base);
        t.delete(b"a2".to_vec());
        t.put(b"a4".to_vec(), b"w".to_vec());
        t.put(b"a1".to_vec(), b"X".to_vec());
        assert_eq!(t.get(b"a2").unwrap(), None);
        assert_eq!(t.get(b"a1").unwrap(), Some(b"X".to_vec()));
        let all = t.scan(b"a", None, 10).unwrap();
        let keys: Vec<_> = all.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"a1"[..], b"a3", b"a4"]);
        assert_eq!(all[0].1, b"X");
        assert_eq!(t.seek_prev(b"a", b"a2").unwrap().unwrap().0, b"a1");
        assert_eq!(t.seek_prev(b"a", b"a9").unwrap().unwrap().0, b"a4");
    }

    #[test]
    fn seek_prev_steps_over_deleted_base_keys() {
        let base = kv(&[(b"p\x00", b"0"), (b"p\x01", b"1"), (b"p\x02", b"2")]);
        let mut t = Txn::new(&base);
        t.delete(b"p\x02".to_vec());
        t.delete(b"p\x01".to_vec());
        assert_eq!(t.seek_prev(b"p", b"p\x05").unwrap().unwrap().0, b"p\x00");
        t.delete(b"p\x00".to_vec());
        assert_eq!(t.seek_prev(b"p", b"p\x05").unwrap(), None);
    }

    #[test]
    fn into_mutations_is_sorted() {
        let base = MemKv::default();
        let mut t = Txn::new(&base);
        t.put(b"b".to_vec(), b"1".to_vec());
        t.delete(b"a".to_vec());
        assert_eq!(
            t.into_mutations(),
            vec![
                Mutation::Delete(b"a".to_vec()),
                Mutation::Put(b"b".to_vec(), b"1".to_vec())
            ]
        );
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(255)], 0..4)
    }

    proptest! {
        /// The overlay answers every read exactly as the base with the writes applied.
        #[test]
        fn overlay_matches_applied_model(
            base_entries in proptest::collection::vec((key(), key()), 0..24),
            writes in proptest::collection::vec((key(), proptest::option::of(key())), 0..24),
            prefix in key(),
            probe in key(),
            limit in 0usize..8,
        ) {
            let mut base = MemKv::default();
            let puts: Vec<_> = base_entries.into_iter().map(|(k, v)| Mutation::Put(k, v)).collect();
            base.apply_mutations(&puts);
            let mut t = Txn::new(&base);
            for (k, v) in &writes {
                match v {
                    Some(v) => t.put(k.clone(), v.clone()),
                    None => t.delete(k.clone()),
                }
            }
            let mut model = base.clone();
            model.apply_mutations(&Txn { base: &base, writes: t.writes.clone() }.into_mutations());

            prop_assert_eq!(t.get(&probe).unwrap(), model.get(&probe).unwrap());
            prop_assert_eq!(
                t.scan(&prefix, None, limit).unwrap(),
                model.scan(&prefix, None, limit).unwrap()
            );
            if probe.starts_with(&prefix) {
                prop_assert_eq!(
                    t.scan(&prefix, Some(&probe), limit).unwrap(),
                    model.scan(&prefix, Some(&probe), limit).unwrap()
                );
                prop_assert_eq!(
                    t.seek_prev(&prefix, &probe).unwrap(),
                    model.seek_prev(&prefix, &probe).unwrap()
                );
            }
        }
    }
}
