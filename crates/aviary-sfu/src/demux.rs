//! Helpers to route an incoming datagram to its transport without scanning them all.
//!
//! Before ICE completes, a STUN binding request names its transport by the local ICE ufrag
//! (the part before `:` in its USERNAME). After that, the remote address alone is enough.

/// STUN magic cookie (RFC 5389).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// The USERNAME attribute type.
const ATTR_USERNAME: u16 = 0x0006;

/// Whether a STUN message carries a MESSAGE-INTEGRITY that `password` (the local ICE
/// password of the transport its USERNAME names) signed: only then may its source address
/// be routed to that transport. Never panics.
pub fn stun_integrity_ok(buf: &[u8], password: &str) -> bool {
    let Ok(msg) = str0m::ice::StunMessage::parse(buf) else {
        return false;
    };
    let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
    msg.verify(password.as_bytes(), |key, payloads| {
        hmac.sha1_hmac(key, payloads)
    })
}

/// Returns true when the datagram looks like STUN (RFC 7983 first-byte range and cookie).
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20 && buf[0] < 4 && buf[4..8] == MAGIC_COOKIE
}

/// The local ufrag named by a STUN message's USERNAME attribute (`local:remote`), if any.
///
/// Returns `None` for anything that is not well-formed STUN with a username; never panics.
pub fn stun_local_ufrag(buf: &[u8]) -> Option<&str> {
    if !is_stun(buf) {
        return None;
    }
    let body_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let end = 20 + body_len;
    if buf.len() < end {
        return None;
    }
    let mut at = 20;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let len = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
        let value = buf[..end].get(at + 4..at + 4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        // Attributes are padded to 4 bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_is_checked_with_the_transports_password() {
        use str0m::ice::{StunMessage, TransId};
        let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
        let sign = |k: &[u8], p: &[&[u8]]| hmac.sha1_hmac(k, p);
        let msg = StunMessage::binding_request("local:remote", TransId::new(), true, 1, 1, false);
        let mut buf = vec![0u8; 256];
        let n = msg
            .to_bytes(Some(b"the-local-password-xyz"), &mut buf, sign)
            .unwrap();
        let signed = &buf[..n];
        assert_eq!(stun_local_ufrag(signed), Some("local"));
        assert!(stun_integrity_ok(signed, "the-local-password-xyz"));
        assert!(!stun_integrity_ok(signed, "another-password-entirely"));
        let msg = StunMessage::binding_request("local:remote", TransId::new(), true, 1, 1, false);
        let n = msg.to_bytes(None, &mut buf, sign).unwrap();
        assert!(
            !stun_integrity_ok(&buf[..n], "the-local-password-xyz"),
            "no integrity at all"
        );
        assert!(!stun_integrity_ok(&[0u8; 3], "x"), "garbage");
    }

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        // A PRIORITY attribute first, so the parser has to skip one.
        let mut body = vec![0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4];
        body.extend_from_slice(&attr);
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn finds_local_ufrag_after_other_attributes() {
        let msg = binding_request("srvufrag:cliufrag");
        assert_eq!(stun_local_ufrag(&msg), Some("srvufrag"));
    }

    #[test]
    fn rejects_non_stun_and_truncated_input() {
        assert_eq!(stun_local_ufrag(&[0x80, 0x60, 0, 0]), None);
        let msg = binding_request("abc:def");
        for cut in 0..msg.len() {
            // Truncation must never panic; only the whole message yields the ufrag.
            let got = stun_local_ufrag(&msg[..cut]);
            assert!(got.is_none() || cut == msg.len(), "cut {cut} gave {got:?}");
        }
        let mut dtls = msg.clone();
        dtls[0] = 22;
        assert_eq!(stun_local_ufrag(&dtls), None);
    }
}
