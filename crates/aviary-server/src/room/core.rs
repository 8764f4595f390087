//! The room core: one room's state and rules, with no sockets, channels or clock.
//!
//! Every method takes the time as an argument and queues what it wants done as
//! [`Output`]s, which its owner drains with [`RoomCore::poll_output`] after each call (the
//! run-loop contract of str0m and the sfu's `Router`, one level up). The methods are split
//! by concern over sibling modules: admission (join, resume, leave), publication,
//! subscription and permissions, metadata, signaling dispatch, and media events.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use livekit_protocol::signal_response::Message;

use super::limits::Limit;
use super::output::{Output, RoomEndReason, RoomEvent};
use super::participant::Participant;
use super::session::LinkId;
use super::{DisconnectReason, leave_request};
use crate::config::{LimitConfig, RoomConfig};
use crate::ids::{Identity, ParticipantSid, RoomSid};
use crate::worker::{PeerKey, WorkerCommand};

/// The LiveKit protocol version this server speaks.
pub const PROTOCOL_VERSION: i32 = 16;
/// The LiveKit server version reported to clients. SDKs gate features on it, so it names the
/// upstream release whose behaviour Aviary follows, not Aviary's own version.
pub const COMPATIBLE_SERVER_VERSION: &str = "1.9.0";

/// How long a participant whose media connection was lost may take to come back (an ICE
/// restart after a resume) before it is removed; upstream's disconnect cleanup delay.
pub const MEDIA_LOSS_GRACE: Duration = Duration::from_secs(5);
/// How long a session whose media is up may stay without a signal link before it is
/// removed. Upstream keeps such a session as long as its media lives; a cap bounds what a
/// client that never resumes can hold. SDKs keep retrying a resume for about 45 s.
pub const MAX_DETACHED: Duration = Duration::from_secs(60);
/// How long a participant may take to get its media connected after joining (upstream's
/// join timeout).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long participants that left are remembered, so that a resuming client that missed
/// their departure is told.
const DEPARTED_MEMORY: Duration = Duration::from_secs(60);
/// At most this many departures are remembered.
const DEPARTED_MAX: usize = 256;

/// The wall clock and the monotonic clock at one instant, as the core's callers read them.
/// The core never reads either itself.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time (timers).
    pub at: Instant,
    /// Unix time in milliseconds (timestamps clients see).
    pub unix_ms: i64,
}

impl Now {
    /// The clocks now.
    pub fn system() -> Self {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Self {
            at: Instant::now(),
            unix_ms,
        }
    }

    /// Unix time in seconds.
    pub fn unix_secs(&self) -> i64 {
        self.unix_ms / 1000
    }
}

/// What every room of a node shares: configuration and the node's identity.
#[derive(Clone, Debug)]
pub struct RoomSettings {
    /// `room:` defaults.
    pub defaults: RoomConfig,
    /// `limit:` values.
    pub limits: LimitConfig,
    /// This node's region.
    pub region: String,
    /// This node's id.
    pub node_id: String,
    /// Time a participant whose media was lost may take to come back.
    pub media_loss_grace: Duration,
    /// Time a session may stay without a signal link.
    pub max_detached: Duration,
    /// Time a participant may take to get its media connected.
    pub join_timeout: Duration,
}

impl RoomSettings {
    /// Settings with upstream's timings.
    pub fn new(defaults: RoomConfig, limits: LimitConfig, region: String, node_id: String) -> Self {
        Self {
            defaults,
            limits,
            region,
            node_id,
            media_loss_grace: MEDIA_LOSS_GRACE,
            max_detached: MAX_DETACHED,
            join_timeout: JOIN_TIMEOUT,
        }
    }

    /// The `ServerInfo` clients are given.
    pub fn server_info(&self) -> proto::ServerInfo {
        proto::ServerInfo {
            edition: proto::server_info::Edition::Standard as i32,
            version: COMPATIBLE_SERVER_VERSION.into(),
            protocol: PROTOCOL_VERSION,
            region: self.region.clone(),
            node_id: self.node_id.clone(),
            ..Default::default()
        }
    }
}

/// One room.
#[derive(Debug)]
pub struct RoomCore {
    pub(super) info: proto::Room,
    pub(super) settings: Arc<RoomSettings>,
    pub(super) participants: Vec<Participant>,
    created: Instant,
    /// When the last participant left; `None` while anyone is in or nobody ever was.
    last_departure: Option<Instant>,
    /// Participants that left recently (for resuming clients that missed it).
    pub(super) departed: VecDeque<(Instant, proto::ParticipantInfo)>,
    /// Index of the media worker that owns this room.
    worker: usize,
    /// Simulated speakers (`SimulateScenario.speaker_update`) and when they stop.
    pub(super) simulated_speakers: Vec<(Instant, ParticipantSid)>,
    out: VecDeque<Output>,
    closed: bool,
}

impl RoomCore {
    /// A new room on media worker `worker`. Its first outputs open its media plane and
    /// announce `room_started`; the caller supplies the media event channel by answering
    /// [`Output::Media`]`(OpenRoom)` (see the room task).
    pub fn new(info: proto::Room, settings: Arc<RoomSettings>, worker: usize, now: Now) -> Self {
        let mut room = Self {
            info,
            settings,
            participants: Vec::new(),
            created: now.at,
            last_departure: None,
            departed: VecDeque::new(),
            worker,
            simulated_speakers: Vec::new(),
            out: VecDeque::new(),
            closed: false,
        };
        room.emit(RoomEvent::RoomStarted {
            room: room.info.clone(),
        });
        room
    }

    /// What clients and RoomService see.
    pub fn info(&self) -> &proto::Room {
        &self.info
    }

    /// The room's sid.
    pub fn sid(&self) -> RoomSid {
        RoomSid::new(self.info.sid.clone())
    }

    /// Index of the media worker that owns this room.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// True once the room has closed; it takes no more participants.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Every participant, in join order.
    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    /// The next thing to do, if any.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] should run next, if anything waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let s = &self.settings;
        let sessions = self.participants.iter().flat_map(|p| {
            let detached = p.session.detached_since.map(|t| t + s.max_detached);
            let lost = p.session.media_lost_since().map(|t| t + s.media_loss_grace);
            let joining = (!p.session.was_active).then(|| p.session.joined_at + s.join_timeout);
            detached.into_iter().chain(lost).chain(joining)
        });
        let speakers = self.simulated_speakers.iter().map(|(t, _)| *t);
        sessions.chain(speakers).chain(self.expiry()).min()
    }

    /// Removes sessions whose grace ran out and closes the room when it has been empty past
    /// its timeout.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.closed {
            return;
        }
        let s = self.settings.clone();
        let expired: Vec<(ParticipantSid, DisconnectReason)> = self
            .participants
            .iter()
            .filter_map(|p| {
                if let Some(t) = p.session.media_lost_since()
                    && now.at >= t + s.media_loss_grace
                {
                    return Some((p.sid(), DisconnectReason::ConnectionTimeout));
                }
                if !p.session.was_active && now.at >= p.session.joined_at + s.join_timeout {
                    return Some((p.sid(), DisconnectReason::JoinFailure));
                }
                match p.session.detached_since {
                    Some(t) if now.at >= t + s.max_detached => {
                        Some((p.sid(), DisconnectReason::SignalClose))
                    }
                    _ => None,
                }
            })
            .collect();
        for (sid, reason) in expired {
            tracing::info!(room = self.info.name, participant = %sid, ?reason, "session timed out");
            self.remove_participant(now, sid.as_str(), reason, Some(leave_request(reason)));
        }
        self.end_simulated_speakers(now);
        let cutoff = now.at.checked_sub(DEPARTED_MEMORY);
        while let Some((t, _)) = self.departed.front() {
            if cutoff.is_some_and(|c| *t < c) {
                self.departed.pop_front();
            } else {
                break;
            }
        }
        if self.expiry().is_some_and(|at| now.at >= at) {
            tracing::info!(room = self.info.name, "room closed (timeout)");
            self.close(
                now,
                DisconnectReason::RoomClosed,
                RoomEndReason::RoomEndIdleTimeout,
            );
        }
    }

    /// When an empty room closes: `departure_timeout` after the last participant left,
    /// `empty_timeout` after creation when nobody ever came.
    fn expiry(&self) -> Option<Instant> {
        if !self.participants.is_empty() {
            return None;
        }
        Some(match self.last_departure {
            Some(left) => left + Duration::from_secs(self.info.departure_timeout.into()),
            None => self.created + Duration::from_secs(self.info.empty_timeout.into()),
        })
    }

    /// Tells everyone to leave, removes them, closes the media plane and ends the room.
    pub fn close(&mut self, now: Now, reason: DisconnectReason, end: RoomEndReason) {
        if self.closed {
            return;
        }
        let sids: Vec<ParticipantSid> = self.participants.iter().map(|p| p.sid()).collect();
        for sid in sids {
            self.remove_participant(now, sid.as_str(), reason, Some(leave_request(reason)));
        }
        self.closed = true;
        self.media(WorkerCommand::CloseRoom { room: self.sid() });
        self.emit(RoomEvent::RoomFinished {
            room: self.info.clone(),
            reason: end,
        });
    }

    // ---- shared helpers for the concern modules

    pub(super) fn index_of(&self, sid: &str) -> Option<usize> {
        self.participants.iter().position(|p| p.info.sid == sid)
    }

    /// The participant with this sid.
    pub fn participant(&self, sid: &str) -> Option<&Participant> {
        self.participants.iter().find(|p| p.info.sid == sid)
    }

    pub(super) fn participant_mut(&mut self, sid: &str) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| p.info.sid == sid)
    }

    /// The participant with this identity.
    pub fn by_identity(&self, identity: &str) -> Option<&Participant> {
        self.participants
            .iter()
            .find(|p| p.info.identity == identity)
    }

    /// The published track with this sid and its publisher.
    pub fn track(&self, track_sid: &str) -> Option<(&proto::TrackInfo, &Participant)> {
        self.participants
            .iter()
            .find_map(|p| p.track(track_sid).map(|t| (t, p)))
    }

    /// Number of participants that count toward `max_participants`.
    pub fn visible_count(&self) -> usize {
        self.participants.iter().filter(|p| !p.hidden()).count()
    }

    pub(super) fn key(&self, participant: &ParticipantSid) -> PeerKey {
        PeerKey {
            room: self.sid(),
            participant: participant.clone(),
        }
    }

    pub(super) fn media(&mut self, cmd: WorkerCommand) {
        self.out.push_back(Output::Media(cmd));
    }

    pub(super) fn emit(&mut self, event: RoomEvent) {
        self.out.push_back(Output::Event(Box::new(event)));
    }

    /// Sends `message` to a participant if a link is attached (a detached one catches up
    /// when it resumes).
    pub(super) fn send(&mut self, to: &str, message: Message) {
        if let Some(p) = self.participant(to)
            && let Some(link) = p.session.link
        {
            let out = Output::signal(&p.sid(), link, message);
            self.out.push_back(out);
        }
    }

    pub(super) fn close_link(&mut self, link: LinkId) {
        self.out.push_back(Output::CloseLink(link));
    }

    /// Tells everyone but `except` (and the participant itself when it is hidden: only it
    /// knows itself) about a participant's changed info.
    pub(super) fn broadcast_participant(
        &mut self,
        info: &proto::ParticipantInfo,
        except: Option<&str>,
    ) {
        let hidden = info.permission.as_ref().is_some_and(|p| p.hidden);
        let targets: Vec<(ParticipantSid, LinkId)> = self
            .participants
            .iter()
            .filter(|p| Some(p.info.sid.as_str()) != except)
            .filter(|p| !hidden || p.info.sid == info.sid)
            .filter_map(|p| p.session.link.map(|l| (p.sid(), l)))
            .collect();
        for (to, link) in targets {
            self.out.push_back(Output::signal(
                &to,
                link,
                Message::Update(proto::ParticipantUpdate {
                    participants: vec![info.clone()],
                }),
            ));
        }
    }

    /// Applies `change` to a participant's info, bumps its version and tells everyone (the
    /// participant itself included, so that it sees changed permissions). Returns the new
    /// info.
    pub(super) fn update_info(
        &mut self,
        sid: &str,
        change: impl FnOnce(&mut proto::ParticipantInfo),
    ) -> Option<proto::ParticipantInfo> {
        let p = self.participant_mut(sid)?;
        change(&mut p.info);
        p.info.version += 1;
        let info = p.info.clone();
        self.broadcast_participant(&info, None);
        // Tracks may have come or gone.
        self.refresh_count();
        Some(info)
    }

    pub(super) fn refresh_count(&mut self) {
        self.info.num_participants = self.visible_count() as u32;
        self.info.num_publishers = self
            .participants
            .iter()
            .filter(|p| !p.hidden() && !p.info.tracks.is_empty())
            .count() as u32;
    }

    /// Takes a participant out of the room: tells it why (`leave`, when it is to be told),
    /// closes its link and media, ends what others receive from it, tells everyone else,
    /// and reports `participant_left` (or `participant_connection_aborted` when its media
    /// never connected).
    pub(super) fn remove_participant(
        &mut self,
        now: Now,
        sid: &str,
        reason: DisconnectReason,
        leave: Option<proto::LeaveRequest>,
    ) -> Option<Participant> {
        let idx = self.index_of(sid)?;
        let mut gone = self.participants.remove(idx);
        let gone_sid = gone.sid();
        if let Some(link) = gone.session.link {
            if let Some(leave) = leave {
                self.out
                    .push_back(Output::signal(&gone_sid, link, Message::Leave(leave)));
            }
            self.close_link(link);
        }
        self.media(WorkerCommand::RemovePeer {
            key: self.key(&gone_sid),
        });
        // What others received from it ends with it.
        for track in &gone.info.tracks {
            for p in &mut self.participants {
                p.subscriptions.remove(track.sid.as_str());
            }
        }
        let tracks = std::mem::take(&mut gone.info.tracks);
        for track in tracks.into_iter().filter(|_| gone.session.was_active) {
            self.emit(RoomEvent::TrackUnpublished {
                room: self.info.clone(),
                participant: gone.info.clone(),
                track,
            });
        }
        self.simulated_speakers.retain(|(_, s)| *s != gone_sid);
        gone.info.state = proto::participant_info::State::Disconnected as i32;
        gone.info.disconnect_reason = reason as i32;
        gone.info.version += 1;
        if self.participants.is_empty() {
            self.last_departure = Some(now.at);
        }
        self.refresh_count();
        if !gone.hidden() {
            self.broadcast_participant(&gone.info.clone(), Some(sid));
            self.departed.push_back((now.at, gone.info.clone()));
            if self.departed.len() > DEPARTED_MAX {
                self.departed.pop_front();
            }
        }
        let event = if gone.session.was_active {
            RoomEvent::ParticipantLeft {
                room: self.info.clone(),
                participant: gone.info.clone(),
            }
        } else {
            RoomEvent::ParticipantConnectionAborted {
                room: self.info.clone(),
                participant: gone.info.clone(),
            }
        };
        self.emit(event);
        tracing::info!(
            room = self.info.name,
            participant = %gone_sid,
            identity = gone.info.identity,
            ?reason,
            "left"
        );
        Some(gone)
    }

    /// A participant hit `limit`: logged at warn the first time, at debug after, so that a
    /// client hammering a limit cannot flood the log.
    pub(super) fn limit_hit(&mut self, sid: &str, limit: Limit, detail: &dyn std::fmt::Display) {
        let room = self.info.name.clone();
        let Some(p) = self.participant_mut(sid) else {
            return;
        };
        if p.session.limits_logged & limit.bit() == 0 {
            p.session.limits_logged |= limit.bit();
            tracing::warn!(room, participant = sid, %limit, "limit reached: {detail} (further hits logged at debug)");
        } else {
            tracing::debug!(room, participant = sid, %limit, "limit reached: {detail}");
        }
    }

    /// Whether a participant with `identity` would exceed `max_participants` (replacing
    /// its own duplicate needs no free place).
    pub fn is_full_for(&self, identity: &Identity) -> bool {
        let max = self.info.max_participants as usize;
        max > 0 && self.visible_count() >= max && self.by_identity(identity.as_str()).is_none()
    }
}
