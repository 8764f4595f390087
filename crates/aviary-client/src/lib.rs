//! Aviary's own LiveKit client, built on str0m: joins a room over `/rtc`, publishes media
//! files in real time (looping), and records what it subscribes to. The `aviary join`
//! command and the tests use it.

pub mod janus;
pub mod load;
pub mod media;
mod session;
pub mod signal;

pub use session::{JoinOptions, JoinSummary, Published, join};

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL could not be used.
    #[error("bad url {0:?}")]
    BadUrl(String),
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
}
