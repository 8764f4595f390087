//! Aviary's own LiveKit client, built on str0m: joins a room over `/rtc`, publishes media
//! files in real time (looping), and records what it subscribes to. The `aviary join`
//! command and the tests use it.

pub mod janus;
pub mod link;
pub mod load;
pub mod media;
pub mod mediasoup;
mod session;
pub mod signal;

pub use session::{JoinOptions, JoinSummary, Published, SessionEvent, join};

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL could not be used.
    #[error(
        "bad server URL {0:?}: expected ws://, wss://, http:// or https:// and host:port, e.g. ws://127.0.0.1:7880"
    )]
    BadUrl(String),
    /// Nothing answered at the URL.
    #[error("cannot reach {url}: {reason}; is the server running there?")]
    Unreachable {
        /// Where.
        url: String,
        /// The system's reason.
        reason: String,
    },
    /// The server answered the WebSocket upgrade with an HTTP error.
    #[error("the server refused the connection: {status} {reason}{}", refusal_hint(*.status))]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's reason (the response body).
        reason: String,
    },
    /// The WebSocket failed.
    #[error("signaling: {0}")]
    Signal(String),
    /// The server closed or refused the session.
    #[error("server: {0}")]
    Server(String),
    /// Local I/O (socket, files).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// WebRTC failed.
    #[error("webrtc: {0}")]
    Rtc(String),
    /// No simulated participant of a kind could connect (load test).
    #[error("no {who} could connect; the first error was {first_error}")]
    NoneConnected {
        /// "publisher" or "subscriber".
        who: &'static str,
        /// The first error any participant ended with.
        first_error: String,
    },
}

/// What to check after the server refused a join with `status`.
fn refusal_hint(status: u16) -> &'static str {
    match status {
        401 => " (check the API key and secret, or the token)",
        403 => " (the token does not allow joining this room)",
        _ => "",
    }
}
