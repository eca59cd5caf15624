//! Cluster membership ops: join tokens (`T` keys) and node records (`M` keys).
//!
//! A token is stored as the blake3 hash of its secret, the role and zone the joiner gets,
//! and its expiry, computed from the command's time (the leader's clock), so every replica
//! agrees on whether a token had expired when it was redeemed. Redeeming is all or
//! nothing: a missing, expired or wrong token is refused with one error (the same code and
//! message for every cause) and changes nothing; a good one is deleted and the joiner's
//! record written in the same batch.

use plait_proto::meta::{JOIN_TOKEN_TTL_MAX_MS, JOIN_TOKENS_MAX, REMOVE_NODE_HEAL_MAX};
use plait_proto::{ErrorCode, MetaReply, NodeId, NodeRecord, NodeRole, Timestamp, ZONE_MAX_BYTES};
use serde::{Deserialize, Serialize};

use super::Applier;
use crate::records::decode;
use crate::{KvRead, OpResult, keys, read, refuse};

/// The one message of every refused join: it must not tell a missing token from a used,
/// expired or mistyped one.
pub const JOIN_REFUSED: &str = "join refused";

/// A join token as stored (`T` key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenRec {
    /// blake3 of the secret.
    pub secret_hash: [u8; 32],
    /// Role of the joiner.
    pub role: NodeRole,
    /// Zone of the joiner.
    pub zone: Option<String>,
    /// The token is refused from this time on.
    pub expires: Timestamp,
}

/// Equality of two hashes in time independent of where they differ.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn join_refused() -> crate::Fail {
    refuse(ErrorCode::AccessDenied, JOIN_REFUSED)
}

/// Checks a zone label: 1..=[`ZONE_MAX_BYTES`] bytes of `[A-Za-z0-9._-]`.
fn check_zone(zone: &Option<String>) -> OpResult<()> {
    if let Some(z) = zone {
        let ok = !z.is_empty()
            && z.len() <= ZONE_MAX_BYTES
            && z.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!("zone must be 1..={ZONE_MAX_BYTES} bytes of [A-Za-z0-9._-]"),
            ));
        }
    }
    Ok(())
}

/// Checks an address: ip:port, at most 64 bytes.
fn check_addr(addr: &str) -> OpResult<()> {
    if addr.len() > 64 || addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            "node address must be ip:port",
        ));
    }
    Ok(())
}

/// Whether `token_id` exists, is not expired at `now` and has `secret_hash`: the same
/// test `ConsumeJoinToken` makes, for a node to turn away bad tokens without proposing
/// anything.
pub fn join_token_valid(
    r: &impl KvRead,
    token_id: u64,
    secret_hash: &[u8; 32],
    now: Timestamp,
) -> Result<bool, crate::StoreError> {
    let key = keys::token(token_id);
    let Some(bytes) = r.get(&key)? else {
        return Ok(false);
    };
    let token: TokenRec = decode(&key, &bytes)?;
    Ok(same_hash(&token.secret_hash, secret_hash) && token.expires > now)
}

/// Every node record, by id.
pub(crate) fn node_records(r: &impl KvRead) -> OpResult<Vec<NodeRecord>> {
    let mut out = Vec::new();
    for (k, v) in read::scan_all(r, &[keys::MEMBER])? {
        out.push(decode::<NodeRecord>(&k, &v)?);
    }
    Ok(out)
}

impl<R: KvRead> Applier<'_, R> {
    pub(super) fn create_join_token(
        &mut self,
        token_id: u64,
        secret_hash: &[u8; 32],
        role: NodeRole,
        zone: &Option<String>,
        ttl_ms: u64,
    ) -> OpResult<MetaReply> {
        if !(1..=JOIN_TOKEN_TTL_MAX_MS).contains(&ttl_ms) {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!("token lifetime must be 1..={JOIN_TOKEN_TTL_MAX_MS} ms"),
            ));
        }
        check_zone(zone)?;
        let key = keys::token(token_id);
        if self.txn.get(&key)?.is_some() {
            return Err(refuse(ErrorCode::Exists, "token id taken"));
        }
        // Prune expired tokens; refuse if too many are still live.
        let mut live = 0usize;
        for (k, v) in self
            .txn
            .scan(&[keys::TOKEN], None, JOIN_TOKENS_MAX.saturating_mul(2))?
        {
            let t: TokenRec = decode(&k, &v)?;
            if t.expires <= self.now {
                self.txn.delete(k);
            } else {
                live += 1;
            }
        }
        if live >= JOIN_TOKENS_MAX {
            return Err(refuse(
                ErrorCode::NoSpace,
                format!("{JOIN_TOKENS_MAX} join tokens outstanding"),
            ));
        }
        let rec = TokenRec {
            secret_hash: *secret_hash,
            role,
            zone: zone.clone(),
            expires: super::locking::later(self.now, ttl_ms),
        };
        self.put(key, &rec)?;
        Ok(MetaReply::Empty)
    }

    pub(super) fn consume_join_token(
        &mut self,
        token_id: u64,
        secret_hash: &[u8; 32],
        addr: &str,
        min_node_id: NodeId,
    ) -> OpResult<MetaReply> {
        let key = keys::token(token_id);
        let Some(bytes) = self.txn.get(&key)? else {
            return Err(join_refused());
        };
        let token: TokenRec = decode(&key, &bytes)?;
        if !same_hash(&token.secret_hash, secret_hash) || token.expires <= self.now {
            return Err(join_refused());
        }
        if check_addr(addr).is_err() {
            return Err(join_refused());
        }
        let highest = node_records(&self.txn)?
            .iter()
            .map(|n| n.id)
            .max()
            .unwrap_or(0);
        let id = read::counter(&self.txn, keys::NEXT_NODE)?
            .max(min_node_id)
            .max(highest.saturating_add(1))
            .max(1);
        let rec = NodeRecord {
            id,
            addr: addr.to_string(),
            role: token.role,
            zone: token.zone,
        };
        self.txn.delete(key);
        self.put(keys::member(id), &rec)?;
        self.put(keys::counter(keys::NEXT_NODE), &id.saturating_add(1))?;
        Ok(MetaReply::Joined(rec))
    }

    pub(super) fn register_node(&mut self, node: &NodeRecord) -> OpResult<MetaReply> {
        if node.id == 0 {
            return Err(refuse(ErrorCode::InvalidArgument, "node id 0"));
        }
        check_addr(&node.addr)?;
        check_zone(&node.zone)?;
        let key = keys::member(node.id);
        let rec = match read::get::<NodeRecord>(&self.txn, &key)? {
            Some(old) => NodeRecord {
                addr: node.addr.clone(),
                ..old
            },
            None => node.clone(),
        };
        self.put(key, &rec)?;
        Ok(MetaReply::Empty)
    }

    pub(super) fn forget_node(&mut self, node: NodeId) -> OpResult<MetaReply> {
        self.txn.delete(keys::member(node));
        let prefix = keys::heal_prefix(node);
        let entries = self.txn.scan(&prefix, None, REMOVE_NODE_HEAL_MAX + 1)?;
        let more = entries.len() > REMOVE_NODE_HEAL_MAX;
        for (k, _) in entries.into_iter().take(REMOVE_NODE_HEAL_MAX) {
            self.txn.delete(k);
        }
        Ok(MetaReply::NodeForgotten { more })
    }
}

#[cfg(test)]
mod tests {
    use plait_proto::{ErrorCode, MetaOp, MetaQuery, MetaReply, NodeRecord, NodeRole};

    use crate::testutil::{Fs, code};

    fn hash(s: &[u8]) -> [u8; 32] {
        *blake3::hash(s).as_bytes()
    }

    fn create(fs: &mut Fs, id: u64, secret: &[u8], ttl_ms: u64) {
        let r = fs.exec(MetaOp::CreateJoinToken {
            token_id: id,
            secret_hash: hash(secret),
            role: NodeRole::Witness,
            zone: Some("z1".into()),
            ttl_ms,
        });
        assert_eq!(r, Ok(MetaReply::Empty));
    }

    fn consume(fs: &mut Fs, id: u64, secret: &[u8]) -> Result<MetaReply, plait_proto::RpcError> {
        fs.exec(MetaOp::ConsumeJoinToken {
            token_id: id,
            secret_hash: hash(secret),
            addr: "127.0.0.1:7000".into(),
            min_node_id: 2,
        })
    }

    fn nodes(fs: &Fs) -> Vec<NodeRecord> {
        match fs.q(MetaQuery::ListNodes) {
            Ok(MetaReply::NodeRecords(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_token_is_single_use_and_gives_its_role_and_zone() {
        let mut fs = Fs::default();
        create(&mut fs, 7, b"secret", 60_000);
        let Ok(MetaReply::Joined(rec)) = consume(&mut fs, 7, b"secret") else {
            panic!()
        };
        assert_eq!(
            (rec.id, rec.role, rec.zone.as_deref()),
            (2, NodeRole::Witness, Some("z1"))
        );
        assert_eq!(nodes(&fs), vec![rec]);
        // Used: refused, with the same error as a token that never existed.
        let used = consume(&mut fs, 7, b"secret").unwrap_err();
        let unknown = consume(&mut fs, 8, b"secret").unwrap_err();
        assert_eq!(used, unknown);
        assert_eq!(used.code, ErrorCode::AccessDenied);
        fs.check();
    }

    #[test]
    fn wrong_or_expired_tokens_are_refused_alike_and_change_nothing() {
        let mut fs = Fs::default();
        create(&mut fs, 1, b"right", 60_000);
        let wrong = consume(&mut fs, 1, b"wrong").unwrap_err();
        // Still redeemable after the wrong attempt (Fs::exec asserts refusals write nothing).
        create(&mut fs, 2, b"short", 1);
        // The next command is one second later: token 2 has expired.
        let expired = consume(&mut fs, 2, b"short").unwrap_err();
        assert_eq!(wrong, expired);
        assert!(nodes(&fs).is_empty());
        assert!(matches!(
            consume(&mut fs, 1, b"right"),
            Ok(MetaReply::Joined(_))
        ));
    }

    #[test]
    fn ids_go_above_every_recorded_node_and_the_minimum() {
        let mut fs = Fs::default();
        let r = fs.exec(MetaOp::RegisterNode {
            node: NodeRecord {
                id: 5,
                addr: "127.0.0.1:1".into(),
                role: NodeRole::Both,
                zone: None,
            },
        });
        assert_eq!(r, Ok(MetaReply::Empty));
        create(&mut fs, 1, b"a", 60_000);
        let Ok(MetaReply::Joined(rec)) = consume(&mut fs, 1, b"a") else {
            panic!()
        };
        assert_eq!(rec.id, 6);
        let r = fs.exec(MetaOp::ForgetNode { node: 6 });
        assert_eq!(r, Ok(MetaReply::NodeForgotten { more: false }));
        // A forgotten id is not handed out again.
        create(&mut fs, 2, b"b", 60_000);
        let Ok(MetaReply::Joined(rec)) = consume(&mut fs, 2, b"b") else {
            panic!()
        };
        assert_eq!(rec.id, 7);
        assert_eq!(nodes(&fs).iter().map(|n| n.id).collect::<Vec<_>>(), [5, 7]);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let mut fs = Fs::default();
        let op = |ttl_ms, zone: Option<&str>| MetaOp::CreateJoinToken {
            token_id: 1,
            secret_hash: [0; 32],
            role: NodeRole::Both,
            zone: zone.map(str::to_string),
            ttl_ms,
        };
        assert_eq!(code(fs.exec(op(0, None))), ErrorCode::InvalidArgument);
        assert_eq!(
            code(fs.exec(op(u64::MAX, None))),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(fs.exec(op(10, Some("a b")))),
            ErrorCode::InvalidArgument
        );
        assert_eq!(fs.exec(op(10, Some("rack-1"))), Ok(MetaReply::Empty));
        assert_eq!(code(fs.exec(op(10, None))), ErrorCode::Exists);
    }
}
