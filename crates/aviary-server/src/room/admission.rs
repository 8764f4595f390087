//! Who is in the room: joining (with duplicate identities replaced), resuming a session on
//! a new link, a link going away, and leaving.

use livekit_protocol as proto;
use livekit_protocol::signal_response::Message;

use super::core::{COMPATIBLE_SERVER_VERSION, Now, RoomCore};
use super::participant::Participant;
use super::session::{LinkId, Session};
use super::{DisconnectReason, leave_request};
use crate::auth::{Claims, permission_from_grant};
use crate::guid;
use crate::ids::{Identity, ParticipantSid};
use crate::worker::WorkerCommand;

/// A client asking to join.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Verified token claims.
    pub claims: Claims,
    /// `protocol` query parameter.
    pub client_protocol: i32,
    /// `auto_subscribe` query parameter (default true).
    pub auto_subscribe: bool,
}

/// A client asking to resume its session (`/rtc?reconnect=1`).
#[derive(Debug, Clone)]
pub struct ResumeRequest {
    /// Verified token claims.
    pub claims: Claims,
    /// The `sid` query parameter: the participant sid the client had, if it says.
    pub participant_sid: Option<ParticipantSid>,
}

/// Why a join was refused. The text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The grant lacks `roomJoin`.
    #[error("token has no roomJoin grant")]
    NoRoomJoin,
    /// The grant names no room.
    #[error("token names no room")]
    NoRoom,
    /// The token has no `sub`.
    #[error("token has no identity")]
    NoIdentity,
    /// `auto_create` is off and the room does not exist.
    #[error("room not found")]
    RoomNotFound,
    /// `max_participants` reached.
    #[error("room is full (max_participants reached)")]
    RoomFull,
    /// The room closed while the join was on its way (the caller tries a new room).
    #[error("room closed")]
    RoomClosed,
    /// The node carries as much as `limit.num_tracks` or `limit.bytes_per_sec` allow.
    #[error("server at capacity ({0}); try again later")]
    AtCapacity(String),
    /// A name longer than `limit.*` allows.
    #[error("{what} is longer than {max} bytes (limit.{key})")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// The limit.
        max: u32,
        /// The config key that sets it.
        key: &'static str,
    },
}

/// Why a resume was refused; the client is then told to join again from scratch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// The room has no participant with that identity (it left, timed out, or the server
    /// restarted).
    #[error("no session for identity {0} in this room")]
    UnknownIdentity(Identity),
    /// The identity's session is a newer one than the client had.
    #[error("the session the client had ({0}) was replaced")]
    Replaced(ParticipantSid),
    /// The room closed.
    #[error("room closed")]
    RoomClosed,
}

impl RoomCore {
    /// Checks that a participant with this identity may join now.
    pub fn check_join(&self, identity: &Identity) -> Result<(), JoinError> {
        if self.is_closed() {
            return Err(JoinError::RoomClosed);
        }
        if self.is_full_for(identity) {
            return Err(JoinError::RoomFull);
        }
        Ok(())
    }

    /// Adds a participant on `link`, replacing one with the same identity. Its first
    /// output on the link is the `JoinResponse`.
    pub fn join(
        &mut self,
        now: Now,
        req: JoinRequest,
        link: LinkId,
    ) -> Result<ParticipantSid, JoinError> {
        let claims = req.claims;
        let identity = Identity::new(claims.sub.clone());
        self.check_join(&identity)?;
        if let Some(old) = self.by_identity(identity.as_str()).map(|p| p.sid()) {
            tracing::debug!(room = self.info.name, %identity, "replacing duplicate identity");
            self.remove_participant(
                now,
                old.as_str(),
                DisconnectReason::DuplicateIdentity,
                Some(leave_request(DisconnectReason::DuplicateIdentity)),
            );
        }
        let permission = permission_from_grant(&claims.video);
        let sid = ParticipantSid::new(guid::new_id(guid::PARTICIPANT_PREFIX));
        let info = proto::ParticipantInfo {
            sid: sid.to_string(),
            identity: claims.sub.clone(),
            name: claims.name.clone(),
            metadata: claims.metadata.clone(),
            attributes: claims.attributes.clone(),
            state: proto::participant_info::State::Joined as i32,
            joined_at: now.unix_secs(),
            joined_at_ms: now.unix_ms,
            version: 1,
            kind: participant_kind(&claims.kind) as i32,
            client_protocol: req.client_protocol,
            permission: Some(permission.clone()),
            region: self.settings.region.clone(),
            ..Default::default()
        };
        let others = self.others(&sid);
        let mut participant = Participant::new(info.clone(), Session::new(link, now.at));
        // Hidden participants (recorders) subscribe to what they ask for, not to everything.
        participant.auto_subscribe = req.auto_subscribe && !permission.hidden;
        let last_reliable_seq = participant.session.last_reliable_seq.clone();
        self.participants.push(participant);
        self.refresh_count();
        self.broadcast_participant(&info, Some(sid.as_str()));
        let response = proto::JoinResponse {
            room: Some(self.info.clone()),
            participant: Some(info.clone()),
            other_participants: others,
            server_version: COMPATIBLE_SERVER_VERSION.into(),
            ice_servers: Vec::new(),
            // The subscriber connection carries the server's data channels, so a client that
            // may subscribe is connected once it is; LiveKit decides the same way.
            subscriber_primary: permission.can_subscribe,
            server_region: self.settings.region.clone(),
            ping_timeout: PING_TIMEOUT_SECS,
            ping_interval: PING_INTERVAL_SECS,
            server_info: Some(self.settings.server_info()),
            ..Default::default()
        };
        self.send(sid.as_str(), Message::Join(response));
        self.media(WorkerCommand::AddPeer {
            key: self.key(&sid),
            identity: identity.clone(),
            can_publish_data: permission.can_publish_data,
            last_reliable_seq,
        });
        self.auto_subscribe_to_existing(&sid);
        tracing::info!(room = self.info.name, participant = %sid, %identity, "joined");
        Ok(sid)
    }

    /// Attaches `link` to the session of the identity in `req` (a client whose signaling
    /// broke, as upstream's `ResumeParticipant` does): the old link closes, and the client
    /// gets, in this order, a `ReconnectResponse`, `DISCONNECTED` updates for whoever left
    /// meanwhile, every participant's info, the room, and then a new subscriber offer that
    /// restarts ICE. The publisher connection restarts ICE by the client's own offer.
    pub fn resume(
        &mut self,
        now: Now,
        req: ResumeRequest,
        link: LinkId,
    ) -> Result<ParticipantSid, ResumeError> {
        if self.is_closed() {
            return Err(ResumeError::RoomClosed);
        }
        let identity = Identity::new(req.claims.sub.clone());
        let Some(p) = self.by_identity(identity.as_str()) else {
            return Err(ResumeError::UnknownIdentity(identity));
        };
        let sid = p.sid();
        if let Some(asked) = &req.participant_sid
            && !asked.as_str().is_empty()
            && *asked != sid
        {
            return Err(ResumeError::Replaced(sid));
        }
        let Some(p) = self.participant_mut(sid.as_str()) else {
            return Err(ResumeError::UnknownIdentity(identity));
        };
        let old = p.session.attach(link);
        let last_message_seq = p.session.last_reliable_seq();
        // Lost media gets a fresh grace period for the ICE restart this resume starts, once
        // per loss.
        if !p.session.grace_extended && p.session.media_lost_since().is_some() {
            p.session.grace_extended = true;
            for lost in p.session.media_lost.iter_mut().flatten() {
                *lost = now.at;
            }
        }
        // A publisher connection without tracks need not come back (SDKs restart it only
        // when they publish media).
        if p.info.tracks.is_empty() && p.pending_tracks.is_empty() {
            p.session.media_lost[proto::SignalTarget::Publisher as usize] = None;
        }
        let refuse = match &mut p.session.refuse_resumes {
            Some((until, left)) if now.at < *until && *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        };
        let disconnect_after = p
            .session
            .disconnect_on_resume
            .take()
            .is_some_and(|until| now.at < until);
        if let Some(old) = old {
            self.close_link(old);
        }
        if refuse {
            // Simulated: the signal breaks again before the server says anything.
            if let Some(p) = self.participant_mut(sid.as_str()) {
                p.session.detach(link, now.at);
            }
            self.close_link(link);
            return Ok(sid);
        }
        self.send(
            sid.as_str(),
            Message::Reconnect(proto::ReconnectResponse {
                ice_servers: Vec::new(),
                client_configuration: None,
                server_info: Some(self.settings.server_info()),
                last_message_seq,
            }),
        );
        let departed: Vec<proto::ParticipantInfo> =
            self.departed.iter().map(|(_, info)| info.clone()).collect();
        if !departed.is_empty() {
            self.send(
                sid.as_str(),
                Message::Update(proto::ParticipantUpdate {
                    participants: departed,
                }),
            );
        }
        // Everyone, itself included: its own metadata or permission may have changed.
        let everyone: Vec<proto::ParticipantInfo> = self
            .participants
            .iter()
            .filter(|o| !o.hidden() || o.info.sid == sid.as_str())
            .map(|o| o.info.clone())
            .collect();
        self.send(
            sid.as_str(),
            Message::Update(proto::ParticipantUpdate {
                participants: everyone,
            }),
        );
        self.send(
            sid.as_str(),
            Message::RoomUpdate(proto::RoomUpdate {
                room: Some(self.info.clone()),
            }),
        );
        self.replay_on_resume(&sid);
        self.media(WorkerCommand::RestartIce {
            key: self.key(&sid),
        });
        tracing::info!(room = self.info.name, participant = %sid, %link, "session resumed");
        if disconnect_after {
            // Simulated: the signal breaks again right after the resume's messages.
            if let Some(p) = self.participant_mut(sid.as_str()) {
                p.session.detach(link, now.at);
            }
            self.close_link(link);
        }
        Ok(sid)
    }

    /// What a session may have missed while detached that a resume's participant and room
    /// updates do not carry: dynacast's wanted qualities (the worker tells only changes),
    /// subscriptions a publisher's permission denies, and RoomService mutes.
    fn replay_on_resume(&mut self, sid: &ParticipantSid) {
        let Some(p) = self.participant_mut(sid.as_str()) else {
            return;
        };
        let mut messages: Vec<Message> = p
            .quality_updates
            .values()
            .cloned()
            .map(Message::SubscribedQualityUpdate)
            .collect();
        messages.extend(
            p.subscriptions
                .iter()
                .filter(|(_, s)| s.denied)
                .map(|(track, s)| {
                    Message::SubscriptionPermissionUpdate(proto::SubscriptionPermissionUpdate {
                        participant_sid: s.publisher.to_string(),
                        track_sid: track.to_string(),
                        allowed: false,
                    })
                }),
        );
        messages.extend(p.missed_mutes.drain(..).map(Message::Mute));
        for m in messages {
            self.send(sid.as_str(), m);
        }
    }

    /// A link went away without a `LeaveRequest`: the session stays (media keeps flowing,
    /// others see nothing) until the client resumes or the session times out. A session
    /// whose media never connected has nothing to keep and ends, as upstream.
    pub fn detach(&mut self, now: Now, sid: &ParticipantSid, link: LinkId) {
        let name = self.info.name.clone();
        let Some(p) = self.participant_mut(sid.as_str()) else {
            return;
        };
        if !p.session.detach(link, now.at) {
            return;
        }
        if p.session.was_active {
            tracing::info!(room = name, participant = %sid, %link, "signal link detached");
        } else {
            self.remove_participant(now, sid.as_str(), DisconnectReason::SignalClose, None);
        }
    }

    /// The client said it is leaving.
    pub fn leave(&mut self, now: Now, sid: &ParticipantSid) {
        self.remove_participant(now, sid.as_str(), DisconnectReason::ClientInitiated, None);
    }

    /// RoomService.RemoveParticipant, and other removals by the server: the participant is
    /// told why and taken out, media included.
    pub fn kick(&mut self, now: Now, sid: &ParticipantSid, reason: DisconnectReason) -> bool {
        self.remove_participant(now, sid.as_str(), reason, Some(leave_request(reason)))
            .is_some()
    }

    /// Public infos of everyone but `except` and hidden participants.
    pub(super) fn others(&self, except: &ParticipantSid) -> Vec<proto::ParticipantInfo> {
        self.participants
            .iter()
            .filter(|p| p.info.sid != except.as_str() && !p.hidden())
            .map(|p| p.info.clone())
            .collect()
    }
}

/// Seconds without a message after which a client's link is considered dead.
pub const PING_TIMEOUT_SECS: i32 = 15;
/// How often clients ping.
pub const PING_INTERVAL_SECS: i32 = 5;

fn participant_kind(kind: &str) -> proto::participant_info::Kind {
    use proto::participant_info::Kind;
    match kind {
        "ingress" => Kind::Ingress,
        "egress" => Kind::Egress,
        "sip" => Kind::Sip,
        "agent" => Kind::Agent,
        _ => Kind::Standard,
    }
}
