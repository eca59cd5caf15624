//! Join tokens as an admin hands them to a new node: one line of text that carries the
//! token's id and secret, the fingerprint of the cluster CA (so the joiner can verify the
//! cluster before it sends anything) and the addresses of nodes to ask.

use serde::{Deserialize, Serialize};

use crate::NetError;

/// Text every token starts with (and the format version).
const TOKEN_PREFIX: &str = "plait-join-1-";

/// Most node addresses a token carries.
pub const TOKEN_ADDRS_MAX: usize = 16;

/// Longest token text accepted, in bytes.
const TOKEN_TEXT_MAX_BYTES: usize = 4096;

/// What a join token carries.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Public id of the token (key of its record in the metadata state).
    pub token_id: u64,
    /// The secret; the cluster stores only its blake3 hash.
    pub secret: [u8; 32],
    /// blake3 of the cluster CA certificate's DER bytes.
    pub ca_fingerprint: [u8; 32],
    /// Addresses (ip:port) of nodes that can redeem it.
    pub addrs: Vec<String>,
}

impl std::fmt::Debug for JoinToken {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("token_id", &self.token_id)
            .field("secret", &"<redacted>")
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl JoinToken {
    /// A new token with a random id and secret.
    pub fn generate(ca_fingerprint: [u8; 32], addrs: Vec<String>) -> Self {
        use rand::Rng;
        let mut rng = rand::rng();
        JoinToken {
            token_id: rng.random(),
            secret: rng.random(),
            ca_fingerprint,
            addrs,
        }
    }

    /// blake3 of the secret: what the cluster stores and compares.
    pub fn secret_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.secret).as_bytes()
    }

    /// The token as one line of text.
    pub fn encode(&self) -> Result<String, NetError> {
        let bytes = plait_proto::encode(self)?;
        let mut s = String::with_capacity(TOKEN_PREFIX.len() + bytes.len() * 2);
        s.push_str(TOKEN_PREFIX);
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Ok(s)
    }

    /// Parses a token's text (surrounding whitespace allowed).
    pub fn decode(text: &str) -> Result<Self, NetError> {
        let bad = |why: &str| NetError::Tls(format!("not a join token: {why}"));
        let text = text.trim();
        if text.len() > TOKEN_TEXT_MAX_BYTES {
            return Err(bad("too long"));
        }
        let hex = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| bad("prefix"))?;
        if hex.len() % 2 != 0 {
            return Err(bad("odd length"));
        }
        let mut bytes = Vec::with_capacity(hex.len() / 2);
        for pair in hex.as_bytes().chunks(2) {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => bytes.push((hi * 16 + lo) as u8),
                _ => return Err(bad("not hex")),
            }
        }
        let token: JoinToken = plait_proto::decode(&bytes).map_err(|_| bad("garbled"))?;
        if token.addrs.is_empty() || token.addrs.len() > TOKEN_ADDRS_MAX {
            return Err(bad("needs 1..=16 node addresses"));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = JoinToken::generate([7; 32], vec!["127.0.0.1:7000".into()]);
        let text = t.encode().unwrap();
        assert_eq!(JoinToken::decode(&format!(" {text}\n")).unwrap(), t);
        assert!(!format!("{t:?}").contains(&format!("{:?}", t.secret)));
        for bad in [
            "",
            "plait-join-1-zz",
            "plait-join-1-0",
            "hello",
            &text[..text.len() - 2],
        ] {
            assert!(JoinToken::decode(bad).is_err(), "{bad}");
        }
        let none = JoinToken::generate([7; 32], vec![]);
        assert!(JoinToken::decode(&none.encode().unwrap()).is_err());
    }
}
