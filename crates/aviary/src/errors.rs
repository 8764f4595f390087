//! Error text for the command line: each cause once, with what to do about it.

use livekit_api::services::ServiceError;
use livekit_api::services::TwirpError as ServerError;

/// One line for an error and its causes, each said once: many libraries put their source
/// into their own message and also return it as the source, so a cause whose text an
/// earlier one already holds is left out.
pub fn describe(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// What a failed RoomService call means, for `call` (its name) sent to `url`.
pub fn service_error(call: &str, url: &str, e: ServiceError) -> anyhow::Error {
    match e {
        ServiceError::Twirp(ServerError::Twirp(code)) => {
            let hint = match code.code.as_str() {
                "unauthenticated" => {
                    "; check --api-key and --api-secret (or LIVEKIT_API_KEY and LIVEKIT_API_SECRET) against the server's keys"
                }
                "permission_denied" => "; the API key's token lacks the grant this call needs",
                _ => "",
            };
            anyhow::anyhow!(
                "{call} at {url}: the server refused it ({}: {}){hint}",
                code.code,
                code.msg
            )
        }
        ServiceError::Twirp(ServerError::Request(e)) => {
            let root = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
            .last()
            .map(|e| e.to_string())
            .unwrap_or_default();
            anyhow::anyhow!(
                "{call}: cannot reach {url}: {root}; is the server running there? (--url or LIVEKIT_URL)"
            )
        }
        other => {
            let other = anyhow::Error::from(other);
            anyhow::anyhow!("{call} at {url}: {}", describe(&other))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner failed")]
    struct Inner;

    #[test]
    fn a_cause_repeated_in_its_wrapper_is_said_once() {
        let e = anyhow::Error::from(Outer(Inner)).context("ListRooms");
        assert_eq!(describe(&e), "ListRooms: outer: inner failed");
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let e = anyhow::Error::from(Inner)
            .context("reading x")
            .context("loading");
        assert_eq!(describe(&e), "loading: reading x: inner failed");
    }
}
