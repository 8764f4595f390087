//! A participant as the room sees it: its public info and the channel to its session.

use livekit_protocol as proto;
use livekit_protocol::signal_response::Message;
use tokio::sync::mpsc;

/// What a room tells a participant's signaling session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionMessage {
    /// Send this to the client.
    Signal(Box<proto::SignalResponse>),
    /// Send this `LeaveRequest`, then close the session.
    Leave(proto::LeaveRequest),
}

impl SessionMessage {
    /// Wraps one signal message.
    pub fn signal(message: Message) -> Self {
        SessionMessage::Signal(Box::new(proto::SignalResponse {
            message: Some(message),
        }))
    }
}

/// One participant in a room.
#[derive(Debug)]
pub struct Participant {
    /// What everyone sees (sid, identity, metadata, permission, version, published tracks).
    pub info: proto::ParticipantInfo,
    /// Tracks announced with `AddTrackRequest` whose media has not arrived yet, by `cid`.
    pub pending_tracks: Vec<(String, proto::TrackInfo)>,
    /// Subscribe to every track published in the room.
    pub auto_subscribe: bool,
    tx: mpsc::UnboundedSender<SessionMessage>,
}

impl Participant {
    /// A participant whose session listens on `tx`.
    pub fn new(info: proto::ParticipantInfo, tx: mpsc::UnboundedSender<SessionMessage>) -> Self {
        Self {
            info,
            pending_tracks: Vec::new(),
            auto_subscribe: true,
            tx,
        }
    }

    /// The permission it has now.
    pub fn permission(&self) -> proto::ParticipantPermission {
        self.info.permission.clone().unwrap_or_default()
    }

    /// Hidden participants (recorders, agents that asked for it) are not shown to others.
    pub fn hidden(&self) -> bool {
        self.info.permission.as_ref().is_some_and(|p| p.hidden)
    }

    /// Queues a message for the session; a session that is gone is simply not told.
    pub fn send(&self, msg: SessionMessage) {
        let _ = self.tx.send(msg);
    }
}
