//! LiveKit-style ids: a type prefix (`RM_`, `PA_`, `TR_`, ...) and 12 random characters.

use rand::Rng;

/// Alphabet without look-alike characters, as LiveKit's short UUIDs use.
const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Prefix of room sids.
pub const ROOM_PREFIX: &str = "RM_";
/// Prefix of participant sids.
pub const PARTICIPANT_PREFIX: &str = "PA_";
/// Prefix of track sids.
pub const TRACK_PREFIX: &str = "TR_";
/// Prefix of node ids.
pub const NODE_PREFIX: &str = "ND_";

/// A new id with `prefix`.
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(prefix.len() + 12);
    s.push_str(prefix);
    for _ in 0..12 {
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

/// Random alphanumeric text (ICE credentials).
pub fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_differ() {
        let a = new_id(ROOM_PREFIX);
        let b = new_id(ROOM_PREFIX);
        assert!(a.starts_with("RM_") && a.len() == 15);
        assert_ne!(a, b);
    }
}
