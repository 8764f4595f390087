//! Rooms and participants: LiveKit's view of who is where, and its rules.
//!
//! - [`RoomCore`] is one room's state and rules, with no sockets, channels or clock: its
//!   methods take the time and queue [`Output`]s (signal messages for links, commands for
//!   the media worker, [`RoomEvent`]s). Its methods are split by concern: [`admission`]
//!   (join, resume, leave), [`publication`], [`subscription`] (and permissions),
//!   [`metadata`], [`signal`] (request dispatch, sync state, simulated scenarios) and
//!   [`media`] (what the worker reports).
//! - A [`Participant`]'s [`Session`] outlives its WebSocket: a socket is a signal link that
//!   attaches to it and detaches from it.
//! - [`actor`] runs each room as a task that owns its core, turns outputs into channel
//!   sends, and keeps time; [`RoomManager`] finds, creates and lists rooms.

pub mod actor;
pub mod admission;
mod core;
mod data;
pub mod limits;
pub mod manager;
pub mod media;
pub mod metadata;
mod output;
mod participant;
pub mod publication;
pub(crate) mod quality;
mod session;
pub mod signal;
pub mod subscription;

pub use self::core::{
    COMPATIBLE_SERVER_VERSION, JOIN_TIMEOUT, MAX_DETACHED, MEDIA_LOSS_GRACE, Now, PROTOCOL_VERSION,
    RoomCore, RoomSettings,
};
pub use actor::{
    EventListener, LINK_BYTES, LINK_QUEUE, LinkMessage, LinkReceiver, LinkSender, RoomHandle,
    link_channel,
};
pub use admission::{JoinError, JoinRequest, ResumeError, ResumeRequest};
pub use manager::RoomManager;
pub use output::{Output, RoomEndReason, RoomEvent};
pub use participant::{Participant, Subscription};
pub use session::{LinkId, Session};

use livekit_protocol as proto;

/// Why a participant leaves; maps to the protocol's `DisconnectReason`.
pub type DisconnectReason = proto::DisconnectReason;

/// Why a RoomService call (or a request on signaling) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// No such room.
    #[error("room {0} not found")]
    RoomNotFound(String),
    /// No such participant in the room.
    #[error("participant {0} not found")]
    ParticipantNotFound(String),
    /// No such track.
    #[error("track {0} not found")]
    TrackNotFound(String),
    /// A field is missing or out of bounds.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A kind of thing this server does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// The server is shutting down and takes no new rooms.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A limit on what one client may make the server hold.
    #[error("{0}")]
    LimitExceeded(String),
}

/// A `LeaveRequest` asking the client to join again from scratch (the SDKs' "full
/// reconnect"): its media connection is gone, or it tried to resume a session this server
/// no longer has. Both fields are set, for old and new clients.
pub fn reconnect_request() -> proto::LeaveRequest {
    proto::LeaveRequest {
        can_reconnect: true,
        reason: DisconnectReason::StateMismatch as i32,
        action: proto::leave_request::Action::Reconnect as i32,
        regions: None,
    }
}

/// A `LeaveRequest` that tells the client to disconnect for `reason`.
pub fn leave_request(reason: DisconnectReason) -> proto::LeaveRequest {
    proto::LeaveRequest {
        can_reconnect: false,
        reason: reason as i32,
        action: proto::leave_request::Action::Disconnect as i32,
        regions: None,
    }
}

#[cfg(test)]
mod tests;
