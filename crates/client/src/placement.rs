//! Chunk placement: rendezvous (highest-random-weight) hashing of a chunk id over the
//! nodes of the cluster map.
//!
//! Every node gets the score `blake3(chunk_id || node_id as u64 big-endian)` (the first 8
//! bytes, big-endian); a chunk lives on the `R` nodes with the highest scores. Every client
//! with the same map computes the same answer without asking anyone, and when a node joins
//! or leaves, only the chunks whose top `R` it enters or leaves move (about `R / N` of
//! them), unlike `hash mod N`.
//!
//! Ordering *all* nodes by score gives the read order too: the placed replicas first, then
//! the nodes that would take over if a placed one left.
//!
//! **Zones.** [`place_in_zones`] walks the same ranking but first takes only nodes of zones
//! not used yet, then fills the remaining slots in rank order; so the `R` copies land in
//! `R` distinct zones when there are that many, and placement is still a pure function of
//! the map. A node without a zone counts as a zone of its own. Only data nodes belong in
//! the map: witnesses store no chunks.

use plait_proto::{ChunkId, NodeId};

/// The placement score of `node` for `chunk`: higher wins.
pub fn score(chunk: &ChunkId, node: NodeId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&chunk.0);
    h.update(&node.to_be_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// Every item of `nodes` ordered by descending score for `chunk` (ties, which need a blake3
/// collision on 64 bits, broken by node id). `id` extracts the node id of an item.
pub fn rank<T, F>(chunk: &ChunkId, nodes: &[T], id: F) -> Vec<T>
where
    T: Clone,
    F: Fn(&T) -> NodeId,
{
    let mut scored: Vec<(u64, NodeId, T)> = nodes
        .iter()
        .map(|n| (score(chunk, id(n)), id(n), n.clone()))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, _, n)| n).collect()
}

/// The `replicas` nodes (fewer if the map is smaller) that hold `chunk`, best first.
pub fn place<T, F>(chunk: &ChunkId, nodes: &[T], replicas: usize, id: F) -> Vec<T>
where
    T: Clone,
    F: Fn(&T) -> NodeId,
{
    let mut ranked = rank(chunk, nodes, id);
    ranked.truncate(replicas);
    ranked
}

/// The `replicas` nodes (fewer if the map is smaller) that hold `chunk`, in distinct zones
/// where there are enough: rank order, preferring nodes of zones not used yet. `zone`
/// gives a node's zone (`None`: a zone of its own).
pub fn place_in_zones<T, F, Z>(
    chunk: &ChunkId,
    nodes: &[T],
    replicas: usize,
    id: F,
    zone: Z,
) -> Vec<T>
where
    T: Clone,
    F: Fn(&T) -> NodeId,
    Z: Fn(&T) -> Option<String>,
{
    let ranked = rank(chunk, nodes, &id);
    let mut taken = vec![false; ranked.len()];
    let mut zones: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(replicas.min(ranked.len()));
    for (i, n) in ranked.iter().enumerate() {
        if out.len() == replicas {
            break;
        }
        match zone(n) {
            Some(z) if zones.contains(&z) => {}
            Some(z) => {
                zones.push(z);
                taken[i] = true;
                out.push(n.clone());
            }
            None => {
                taken[i] = true;
                out.push(n.clone());
            }
        }
    }
    for (i, n) in ranked.iter().enumerate() {
        if out.len() == replicas {
            break;
        }
        if !taken[i] {
            out.push(n.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    fn chunk(i: u32) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    fn ids(n: u64) -> Vec<NodeId> {
        (1..=n).collect()
    }

    #[test]
    fn placement_is_stable_and_independent_of_map_order() {
        let nodes = ids(5);
        let mut reversed = nodes.clone();
        reversed.reverse();
        for i in 0..100 {
            let a = place(&chunk(i), &nodes, 3, |n| *n);
            assert_eq!(a, place(&chunk(i), &nodes, 3, |n| *n));
            assert_eq!(a, place(&chunk(i), &reversed, 3, |n| *n));
        }
    }

    #[test]
    fn replicas_are_distinct_and_capped_by_the_map() {
        for i in 0..100 {
            let placed = place(&chunk(i), &ids(5), 3, |n| *n);
            assert_eq!(placed.len(), 3);
            assert_eq!(placed.iter().collect::<BTreeSet<_>>().len(), 3);
        }
        assert_eq!(place(&chunk(1), &ids(2), 3, |n| *n).len(), 2);
        assert!(place(&chunk(1), &ids(0), 3, |n| *n).is_empty());
    }

    #[test]
    fn rank_starts_with_the_placed_replicas() {
        for i in 0..50 {
            let ranked = rank(&chunk(i), &ids(5), |n| *n);
            assert_eq!(ranked.len(), 5);
            assert_eq!(ranked[..3], place(&chunk(i), &ids(5), 3, |n| *n)[..]);
        }
    }

    #[test]
    fn load_spreads_evenly() {
        let nodes = ids(5);
        let chunks = 10_000u32;
        let mut load: HashMap<NodeId, u32> = HashMap::new();
        for i in 0..chunks {
            for n in place(&chunk(i), &nodes, 3, |n| *n) {
                *load.entry(n).or_default() += 1;
            }
        }
        // Each node should hold 3/5 of the chunks: 6,000; allow ±5 %.
        for n in &nodes {
            let l = load.get(n).copied().unwrap_or(0);
            assert!((5_700..=6_300).contains(&l), "node {n} holds {l} chunks");
        }
    }

    #[test]
    fn zones_are_distinct_when_there_are_enough() {
        // Nodes 1-3 in zone a, 4-5 in zone b, 6 without a zone.
        let zone = |n: &NodeId| match n {
            1..=3 => Some("a".to_string()),
            4 | 5 => Some("b".to_string()),
            _ => None,
        };
        let nodes = ids(6);
        for i in 0..500 {
            let placed = place_in_zones(&chunk(i), &nodes, 3, |n| *n, zone);
            assert_eq!(placed.len(), 3);
            let zones: BTreeSet<_> = placed
                .iter()
                .map(|n| zone(n).unwrap_or("6".into()))
                .collect();
            assert_eq!(zones.len(), 3, "chunk {i}: {placed:?}");
            // Deterministic and independent of map order.
            let mut rev = nodes.clone();
            rev.reverse();
            assert_eq!(placed, place_in_zones(&chunk(i), &rev, 3, |n| *n, zone));
        }
        // Fewer zones than replicas: all zones used, the rest filled in rank order.
        let two_zones = |n: &NodeId| Some(if *n <= 3 { "a" } else { "b" }.to_string());
        for i in 0..100 {
            let placed = place_in_zones(&chunk(i), &nodes, 4, |n| *n, two_zones);
            assert_eq!(placed.len(), 4);
            assert_eq!(placed.iter().collect::<BTreeSet<_>>().len(), 4);
            let zones: BTreeSet<_> = placed.iter().map(two_zones).collect();
            assert_eq!(zones.len(), 2);
        }
        // Without zones it is plain rendezvous placement.
        for i in 0..100 {
            assert_eq!(
                place_in_zones(&chunk(i), &nodes, 3, |n| *n, |_| None),
                place(&chunk(i), &nodes, 3, |n| *n)
            );
        }
    }

    #[test]
    fn adding_a_node_moves_few_chunks() {
        let before = ids(5);
        let after = ids(6);
        let chunks = 10_000u32;
        let mut moved = 0u32;
        for i in 0..chunks {
            let a: BTreeSet<_> = place(&chunk(i), &before, 3, |n| *n).into_iter().collect();
            let b: BTreeSet<_> = place(&chunk(i), &after, 3, |n| *n).into_iter().collect();
            let lost: Vec<_> = a.difference(&b).collect();
            // A replica only ever moves to the new node.
            for n in b.difference(&a) {
                assert_eq!(*n, 6);
            }
            assert!(lost.len() <= 1);
            moved += lost.len() as u32;
        }
        // The new node takes 3/6 of the chunks' replica slots it enters: about half the
        // chunks gain it, each losing exactly one old replica.
        let expected = chunks / 2;
        assert!(
            (expected * 9 / 10..=expected * 11 / 10).contains(&moved),
            "{moved} replicas moved"
        );
    }
}
