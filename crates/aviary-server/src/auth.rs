//! Access tokens: HS256 JWTs signed with an API secret, as LiveKit issues them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use livekit_api::access_token::TokenVerifier;
pub use livekit_api::access_token::{Claims, VideoGrants};
use livekit_protocol as proto;

/// Clock skew tolerated on `exp` and `nbf`, as LiveKit's JWT library allows.
const LEEWAY_SECS: u64 = 60;

/// Why a token was refused. The text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the request.
    #[error("no access token")]
    Missing,
    /// Not a JWT.
    #[error("malformed access token")]
    Malformed,
    /// `iss` names no configured key.
    #[error("unknown API key")]
    UnknownKey,
    /// Past `exp`.
    #[error("access token has expired")]
    Expired,
    /// Before `nbf`.
    #[error("access token is not valid yet")]
    NotYetValid,
    /// Signature does not match the key's secret.
    #[error("invalid access token signature")]
    BadSignature,
}

/// The configured API keys.
#[derive(Clone, Debug)]
pub struct KeyProvider {
    keys: BTreeMap<String, String>,
}

impl KeyProvider {
    /// Keys as `key → secret`.
    pub fn new(keys: BTreeMap<String, String>) -> Self {
        Self { keys }
    }

    /// Checks the token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let unverified = Claims::from_unverified(token).map_err(|_| AuthError::Malformed)?;
        let secret = self
            .keys
            .get(&unverified.iss)
            .ok_or(AuthError::UnknownKey)?;
        match TokenVerifier::with_api_key(&unverified.iss, secret).verify(token) {
            Ok(claims) => Ok(claims),
            Err(_) => {
                // The library's error does not say which check failed; the time checks are
                // cheap to redo on the (now known to be well-formed) claims.
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                if (unverified.exp as u64).saturating_add(LEEWAY_SECS) < now {
                    Err(AuthError::Expired)
                } else if (unverified.nbf as u64) > now.saturating_add(LEEWAY_SECS) {
                    Err(AuthError::NotYetValid)
                } else {
                    Err(AuthError::BadSignature)
                }
            }
        }
    }
}

/// The permission a participant gets from its grant.
pub fn permission_from_grant(g: &VideoGrants) -> proto::ParticipantPermission {
    proto::ParticipantPermission {
        can_subscribe: g.can_subscribe.unwrap_or(true),
        can_publish: g.can_publish.unwrap_or(true),
        can_publish_data: g.can_publish_data.unwrap_or(true),
        can_publish_sources: g
            .can_publish_sources
            .iter()
            .filter_map(|s| source_from_name(s))
            .map(|s| s as i32)
            .collect(),
        hidden: g.hidden,
        can_update_metadata: g.can_update_own_metadata.unwrap_or(false),
        #[allow(deprecated)]
        recorder: g.recorder,
        #[allow(deprecated)]
        agent: g.agent,
        ..Default::default()
    }
}

/// A grant's source name (`camera`, `microphone`, ...) as a protocol track source.
pub fn source_from_name(name: &str) -> Option<proto::TrackSource> {
    match name.to_ascii_lowercase().as_str() {
        "camera" => Some(proto::TrackSource::Camera),
        "microphone" => Some(proto::TrackSource::Microphone),
        "screen_share" => Some(proto::TrackSource::ScreenShare),
        "screen_share_audio" => Some(proto::TrackSource::ScreenShareAudio),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livekit_api::access_token::AccessToken;

    fn provider() -> KeyProvider {
        KeyProvider::new(BTreeMap::from([("k".to_string(), "s".repeat(32))]))
    }

    fn token(key: &str, secret: &str) -> AccessToken {
        AccessToken::with_api_key(key, secret)
            .with_identity("alice")
            .with_grants(VideoGrants {
                room_join: true,
                room: "r".into(),
                ..Default::default()
            })
    }

    #[test]
    fn accepts_good_token() {
        let jwt = token("k", &"s".repeat(32)).to_jwt().unwrap();
        let c = provider().verify(&jwt).unwrap();
        assert_eq!(c.sub, "alice");
        assert!(c.video.room_join);
    }

    #[test]
    fn classifies_failures() {
        let p = provider();
        assert_eq!(p.verify(""), Err(AuthError::Missing));
        assert_eq!(p.verify("abc"), Err(AuthError::Malformed));
        let other_key = token("nope", &"s".repeat(32)).to_jwt().unwrap();
        assert_eq!(p.verify(&other_key), Err(AuthError::UnknownKey));
        let bad_sig = token("k", &"x".repeat(32)).to_jwt().unwrap();
        assert_eq!(p.verify(&bad_sig), Err(AuthError::BadSignature));
    }

    /// Signs arbitrary claims, for times the token builder will not produce.
    fn sign(claims: &Claims, secret: &str) -> String {
        use base64::Engine;
        use hmac::Mac;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = b64.encode(serde_json::to_vec(claims).unwrap());
        let input = format!("{header}.{body}");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn classifies_time_failures() {
        let p = provider();
        let secret = "s".repeat(32);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as usize;
        let mut claims = Claims::from_unverified(&token("k", &secret).to_jwt().unwrap()).unwrap();
        claims.nbf = now - 10;
        assert!(
            p.verify(&sign(&claims, &secret)).is_ok(),
            "the signer is sound"
        );
        claims.exp = now - 3600;
        claims.nbf = now - 7200;
        assert_eq!(p.verify(&sign(&claims, &secret)), Err(AuthError::Expired));
        claims.exp = now + 7200;
        claims.nbf = now + 3600;
        assert_eq!(
            p.verify(&sign(&claims, &secret)),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn permission_defaults_follow_livekit() {
        let p = permission_from_grant(&VideoGrants {
            can_publish_sources: vec!["camera".into(), "bogus".into()],
            ..Default::default()
        });
        assert!(p.can_publish && p.can_subscribe && p.can_publish_data);
        assert!(!p.can_update_metadata);
        assert_eq!(
            p.can_publish_sources,
            vec![proto::TrackSource::Camera as i32]
        );
    }
}
