//! Rooms and participants: LiveKit's view of who is where, without sockets or media.
//!
//! A [`Room`] is plain state whose methods queue the signal messages each change causes on
//! the participants' session channels. [`RoomManager`] holds every room of this node.

mod manager;
mod participant;
pub(crate) mod quality;

pub use manager::{JoinError, JoinRequest, Joined, RoomManager, ServiceError};
pub use participant::{Participant, SessionMessage};

use std::time::{Duration, Instant};

use livekit_protocol as proto;
use livekit_protocol::signal_response::Message;

/// Why a participant leaves; maps to the protocol's `DisconnectReason`.
pub type DisconnectReason = proto::DisconnectReason;

/// One room.
#[derive(Debug)]
pub struct Room {
    /// What clients and RoomService see.
    pub info: proto::Room,
    participants: Vec<Participant>,
    created: Instant,
    /// When the last participant left; `None` while anyone is in or nobody ever was.
    last_departure: Option<Instant>,
    /// Index of the media worker that owns this room.
    pub worker: usize,
}

impl Room {
    /// An empty room.
    pub fn new(info: proto::Room, now: Instant, worker: usize) -> Self {
        Self {
            info,
            participants: Vec::new(),
            created: now,
            last_departure: None,
            worker,
        }
    }

    /// Every participant, in join order.
    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    /// The participant with this identity.
    pub fn by_identity(&self, identity: &str) -> Option<&Participant> {
        self.participants
            .iter()
            .find(|p| p.info.identity == identity)
    }

    /// The participant with this sid.
    pub fn by_sid(&self, sid: &str) -> Option<&Participant> {
        self.participants.iter().find(|p| p.info.sid == sid)
    }

    /// The participant with this sid, to change fields that are not broadcast.
    pub fn by_sid_mut(&mut self, sid: &str) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| p.info.sid == sid)
    }

    /// The published track with this sid and the sid of its publisher.
    pub fn track(&self, track_sid: &str) -> Option<(&proto::TrackInfo, &str)> {
        self.participants.iter().find_map(|p| {
            p.info
                .tracks
                .iter()
                .find(|t| t.sid == track_sid)
                .map(|t| (t, p.info.sid.as_str()))
        })
    }

    /// Number of participants that count toward `max_participants`.
    pub fn visible_count(&self) -> usize {
        self.participants.iter().filter(|p| !p.hidden()).count()
    }

    /// Public infos of everyone but `except` and hidden participants.
    pub fn others(&self, except: &str) -> Vec<proto::ParticipantInfo> {
        self.participants
            .iter()
            .filter(|p| p.info.sid != except && !p.hidden())
            .map(|p| p.info.clone())
            .collect()
    }

    /// Adds a participant and tells everyone else.
    pub fn add(&mut self, participant: Participant) {
        self.last_departure = None;
        let info = participant.info.clone();
        let hidden = participant.hidden();
        self.participants.push(participant);
        self.refresh_count();
        if !hidden {
            self.broadcast_participant(&info, Some(&info.sid));
        }
    }

    /// Removes a participant, tells everyone else it left, and returns it.
    pub fn remove(
        &mut self,
        sid: &str,
        reason: DisconnectReason,
        now: Instant,
    ) -> Option<Participant> {
        let idx = self.participants.iter().position(|p| p.info.sid == sid)?;
        let mut gone = self.participants.remove(idx);
        gone.info.state = proto::participant_info::State::Disconnected as i32;
        gone.info.disconnect_reason = reason as i32;
        gone.info.version += 1;
        if self.participants.is_empty() {
            self.last_departure = Some(now);
        }
        self.refresh_count();
        if !gone.hidden() {
            self.broadcast_participant(&gone.info, Some(sid));
        }
        Some(gone)
    }

    /// Applies `change` to a participant's info, bumps its version and tells everyone
    /// (the participant itself included, so that it sees changed permissions).
    pub fn update_participant(
        &mut self,
        sid: &str,
        change: impl FnOnce(&mut proto::ParticipantInfo),
    ) -> Option<proto::ParticipantInfo> {
        let p = self.participants.iter_mut().find(|p| p.info.sid == sid)?;
        change(&mut p.info);
        p.info.version += 1;
        let info = p.info.clone();
        let hidden = p.hidden();
        if hidden {
            // Only the participant itself knows a hidden participant.
            p.send(SessionMessage::signal(Message::Update(
                proto::ParticipantUpdate {
                    participants: vec![info.clone()],
                },
            )));
        } else {
            self.broadcast_participant(&info, None);
        }
        // Tracks may have come or gone.
        self.refresh_count();
        Some(info)
    }

    /// Sets the room's metadata and tells everyone.
    pub fn set_metadata(&mut self, metadata: String) {
        self.info.metadata = metadata;
        let update = Message::RoomUpdate(proto::RoomUpdate {
            room: Some(self.info.clone()),
        });
        for p in &self.participants {
            p.send(SessionMessage::signal(update.clone()));
        }
    }

    /// Sends a `LeaveRequest` to everyone and empties the room.
    pub fn close(&mut self, reason: DisconnectReason, now: Instant) {
        for p in self.participants.drain(..) {
            p.send(SessionMessage::Leave(leave_request(reason)));
        }
        self.last_departure = Some(now);
        self.refresh_count();
    }

    /// True when the room has been empty past its timeout: `departure_timeout` after the
    /// last participant left, `empty_timeout` after creation when nobody ever came.
    pub fn is_expired(&self, now: Instant) -> bool {
        if !self.participants.is_empty() {
            return false;
        }
        match self.last_departure {
            Some(left) => {
                now.duration_since(left) >= Duration::from_secs(self.info.departure_timeout.into())
            }
            None => {
                now.duration_since(self.created)
                    >= Duration::from_secs(self.info.empty_timeout.into())
            }
        }
    }

    fn refresh_count(&mut self) {
        self.info.num_participants = self.visible_count() as u32;
        self.info.num_publishers = self
            .participants
            .iter()
            .filter(|p| !p.hidden() && !p.info.tracks.is_empty())
            .count() as u32;
    }

    fn broadcast_participant(&self, info: &proto::ParticipantInfo, except: Option<&str>) {
        let msg = Message::Update(proto::ParticipantUpdate {
            participants: vec![info.clone()],
        });
        for p in &self.participants {
            if Some(p.info.sid.as_str()) != except {
                p.send(SessionMessage::signal(msg.clone()));
            }
        }
    }
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
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn participant(
        sid: &str,
        hidden: bool,
    ) -> (Participant, mpsc::UnboundedReceiver<SessionMessage>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let info = proto::ParticipantInfo {
            sid: sid.into(),
            identity: format!("id-{sid}"),
            permission: Some(proto::ParticipantPermission {
                hidden,
                ..Default::default()
            }),
            ..Default::default()
        };
        (Participant::new(info, tx), rx)
    }

    fn room(empty: u32, departure: u32, now: Instant) -> Room {
        Room::new(
            proto::Room {
                sid: "RM_x".into(),
                name: "r".into(),
                empty_timeout: empty,
                departure_timeout: departure,
                ..Default::default()
            },
            now,
            0,
        )
    }

    fn updates(rx: &mut mpsc::UnboundedReceiver<SessionMessage>) -> Vec<proto::ParticipantInfo> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let SessionMessage::Signal(s) = m
                && let Some(Message::Update(u)) = s.message
            {
                out.extend(u.participants);
            }
        }
        out
    }

    #[test]
    fn join_and_leave_are_broadcast_to_others_only() {
        let now = Instant::now();
        let mut r = room(300, 20, now);
        let (a, mut arx) = participant("PA_a", false);
        let (b, mut brx) = participant("PA_b", false);
        r.add(a);
        r.add(b);
        assert_eq!(r.info.num_participants, 2);
        let seen_by_a = updates(&mut arx);
        assert_eq!(seen_by_a.len(), 1);
        assert_eq!(seen_by_a[0].sid, "PA_b");
        assert!(
            updates(&mut brx).is_empty(),
            "b is not told of its own join"
        );
        r.remove("PA_b", DisconnectReason::ClientInitiated, now);
        let seen_by_a = updates(&mut arx);
        assert_eq!(
            seen_by_a[0].state,
            proto::participant_info::State::Disconnected as i32
        );
        assert_eq!(r.info.num_participants, 1);
    }

    #[test]
    fn hidden_participants_are_not_shown() {
        let now = Instant::now();
        let mut r = room(300, 20, now);
        let (a, mut arx) = participant("PA_a", false);
        let (h, mut hrx) = participant("PA_h", true);
        r.add(a);
        r.add(h);
        assert!(updates(&mut arx).is_empty());
        assert_eq!(r.others("PA_a").len(), 0);
        assert_eq!(r.visible_count(), 1);
        r.update_participant("PA_h", |i| i.metadata = "m".into());
        assert!(updates(&mut arx).is_empty());
        assert_eq!(updates(&mut hrx)[0].metadata, "m");
    }

    #[test]
    fn updates_bump_version_and_reach_everyone() {
        let now = Instant::now();
        let mut r = room(300, 20, now);
        let (a, mut arx) = participant("PA_a", false);
        let (b, mut brx) = participant("PA_b", false);
        r.add(a);
        r.add(b);
        updates(&mut arx);
        let v = r.by_sid("PA_b").unwrap().info.version;
        r.update_participant("PA_b", |i| i.name = "Bob".into());
        assert_eq!(updates(&mut arx)[0].name, "Bob");
        let own = updates(&mut brx);
        assert_eq!(own[0].version, v + 1);
    }

    #[test]
    fn timeouts() {
        let t0 = Instant::now();
        let mut r = room(10, 2, t0);
        assert!(!r.is_expired(t0 + Duration::from_secs(9)));
        assert!(r.is_expired(t0 + Duration::from_secs(10)));
        let (a, _arx) = participant("PA_a", false);
        r.add(a);
        assert!(!r.is_expired(t0 + Duration::from_secs(100)));
        r.remove(
            "PA_a",
            DisconnectReason::ClientInitiated,
            t0 + Duration::from_secs(100),
        );
        assert!(!r.is_expired(t0 + Duration::from_secs(101)));
        assert!(r.is_expired(t0 + Duration::from_secs(102)));
    }

    #[test]
    fn close_sends_leave_to_all() {
        let now = Instant::now();
        let mut r = room(10, 2, now);
        let (a, mut arx) = participant("PA_a", false);
        r.add(a);
        r.close(DisconnectReason::RoomDeleted, now);
        assert_eq!(
            arx.try_recv().unwrap(),
            SessionMessage::Leave(leave_request(DisconnectReason::RoomDeleted))
        );
        assert!(r.participants().is_empty());
    }
}
