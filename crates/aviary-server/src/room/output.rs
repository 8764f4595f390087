//! What a room core asks of the world: messages for signal links, commands for its media
//! worker, and domain events for whoever listens (webhooks today).

use livekit_protocol as proto;
use livekit_protocol::signal_response::Message;

use super::session::LinkId;
use crate::ids::ParticipantSid;
use crate::worker::WorkerCommand;

/// One thing a room core wants done. The core never does it itself; its owner drains these
/// after every call and carries them out in order.
#[derive(Debug)]
pub enum Output {
    /// Send `message` on `link`, the signal link attached to participant `to`. A room
    /// never addresses a detached participant: what it misses is sent again on resume.
    Signal {
        /// The participant.
        to: ParticipantSid,
        /// Its link.
        link: LinkId,
        /// The message.
        message: Box<proto::SignalResponse>,
    },
    /// Close this link once what was queued on it is sent (after a `LeaveRequest`, or when
    /// a resume replaced it).
    CloseLink(LinkId),
    /// A command for the room's media worker.
    Media(WorkerCommand),
    /// Something happened in the room (boxed: rooms and participants are large, and most
    /// outputs are small signal messages).
    Event(Box<RoomEvent>),
}

impl Output {
    /// A signal message.
    pub fn signal(to: &ParticipantSid, link: LinkId, message: Message) -> Self {
        Output::Signal {
            to: to.clone(),
            link,
            message: Box::new(proto::SignalResponse {
                message: Some(message),
            }),
        }
    }
}

/// Why a room ended, for `room_finished`.
pub type RoomEndReason = proto::RoomEndReason;

/// A domain event: what applications learn through webhooks (and, later, what metrics,
/// replication and egress consume). Each carries the room as it was at that moment.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent {
    /// The room was created.
    RoomStarted {
        /// The room.
        room: proto::Room,
    },
    /// The room closed.
    RoomFinished {
        /// The room.
        room: proto::Room,
        /// Why.
        reason: RoomEndReason,
    },
    /// A participant joined.
    ParticipantJoined {
        /// The room.
        room: proto::Room,
        /// The participant.
        participant: proto::ParticipantInfo,
    },
    /// A participant left or was removed, after its media had connected.
    ParticipantLeft {
        /// The room.
        room: proto::Room,
        /// The participant, as it left (state DISCONNECTED, with its reason).
        participant: proto::ParticipantInfo,
    },
    /// A participant left before its media ever connected.
    ParticipantConnectionAborted {
        /// The room.
        room: proto::Room,
        /// The participant.
        participant: proto::ParticipantInfo,
    },
    /// A track was published (its media arrived).
    TrackPublished {
        /// The room.
        room: proto::Room,
        /// Its publisher.
        participant: proto::ParticipantInfo,
        /// The track.
        track: proto::TrackInfo,
    },
    /// A track was unpublished.
    TrackUnpublished {
        /// The room.
        room: proto::Room,
        /// Its publisher.
        participant: proto::ParticipantInfo,
        /// The track.
        track: proto::TrackInfo,
    },
}

impl RoomEvent {
    /// The webhook event name (upstream's).
    pub fn name(&self) -> &'static str {
        match self {
            RoomEvent::RoomStarted { .. } => "room_started",
            RoomEvent::RoomFinished { .. } => "room_finished",
            RoomEvent::ParticipantJoined { .. } => "participant_joined",
            RoomEvent::ParticipantLeft { .. } => "participant_left",
            RoomEvent::ParticipantConnectionAborted { .. } => "participant_connection_aborted",
            RoomEvent::TrackPublished { .. } => "track_published",
            RoomEvent::TrackUnpublished { .. } => "track_unpublished",
        }
    }

    /// The room it happened in.
    pub fn room(&self) -> &proto::Room {
        match self {
            RoomEvent::RoomStarted { room }
            | RoomEvent::RoomFinished { room, .. }
            | RoomEvent::ParticipantJoined { room, .. }
            | RoomEvent::ParticipantLeft { room, .. }
            | RoomEvent::ParticipantConnectionAborted { room, .. }
            | RoomEvent::TrackPublished { room, .. }
            | RoomEvent::TrackUnpublished { room, .. } => room,
        }
    }

    /// The event as a webhook body, without its id and time (the notifier stamps those).
    pub fn to_webhook(&self) -> proto::WebhookEvent {
        let mut ev = proto::WebhookEvent {
            event: self.name().to_string(),
            room: Some(self.room().clone()),
            ..Default::default()
        };
        match self {
            RoomEvent::RoomStarted { .. } => {}
            RoomEvent::RoomFinished { reason, .. } => ev.room_end_reason = *reason as i32,
            RoomEvent::ParticipantJoined { participant, .. }
            | RoomEvent::ParticipantLeft { participant, .. }
            | RoomEvent::ParticipantConnectionAborted { participant, .. } => {
                ev.participant = Some(participant.clone());
            }
            RoomEvent::TrackPublished {
                room,
                participant,
                track,
            }
            | RoomEvent::TrackUnpublished {
                room,
                participant,
                track,
            } => {
                // As upstream: track events name the room and participant, no more.
                ev.room = Some(proto::Room {
                    sid: room.sid.clone(),
                    name: room.name.clone(),
                    ..Default::default()
                });
                ev.participant = Some(proto::ParticipantInfo {
                    sid: participant.sid.clone(),
                    identity: participant.identity.clone(),
                    ..Default::default()
                });
                ev.track = Some(track.clone());
            }
        }
        ev
    }
}
