//! Every room of this node, behind one lock that is never held across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use livekit_protocol as proto;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::{DisconnectReason, Participant, Room, SessionMessage, leave_request, quality};
use crate::auth::{Claims, permission_from_grant};
use crate::config::{LimitConfig, RoomConfig};
use crate::guid;
use crate::worker::{MediaEvent, PeerKey, ProducedMedia, WorkerCommand, WorkerHandle};
use aviary_sfu::{DataKind, MediaKind};
use prost::Message as _;

/// The LiveKit protocol version this server speaks.
pub const PROTOCOL_VERSION: i32 = 16;
/// The LiveKit server version reported to clients. SDKs gate features on it, so it names the
/// upstream release whose behaviour Aviary follows, not Aviary's own version.
pub const COMPATIBLE_SERVER_VERSION: &str = "1.9.0";

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

/// A successful join.
#[derive(Debug)]
pub struct Joined {
    /// What to send the client first.
    pub response: proto::JoinResponse,
    /// The room's name.
    pub room_name: String,
    /// The room's sid.
    pub room_sid: String,
    /// The new participant's sid.
    pub participant_sid: String,
    /// The media worker that owns the room.
    pub worker: usize,
    /// Messages the room has for this participant.
    pub rx: mpsc::UnboundedReceiver<SessionMessage>,
    /// Events from the media worker for this participant.
    pub media_rx: mpsc::UnboundedReceiver<MediaEvent>,
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

/// Why a RoomService call failed.
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
}

/// All rooms of this node.
pub struct RoomManager {
    rooms: Mutex<HashMap<String, Room>>,
    defaults: RoomConfig,
    limits: LimitConfig,
    node_id: String,
    region: String,
    workers: Vec<WorkerHandle>,
    next_worker: AtomicUsize,
}

fn unix_now() -> (i64, i64) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.as_millis() as i64)
}

impl RoomManager {
    /// A manager placing rooms on these media workers (at least one).
    pub fn new(
        defaults: RoomConfig,
        limits: LimitConfig,
        region: String,
        workers: Vec<WorkerHandle>,
    ) -> Self {
        assert!(
            !workers.is_empty(),
            "a RoomManager needs at least one worker"
        );
        Self {
            rooms: Mutex::new(HashMap::new()),
            defaults,
            limits,
            node_id: guid::new_id(guid::NODE_PREFIX),
            region,
            workers,
            next_worker: AtomicUsize::new(0),
        }
    }

    /// The worker that owns `room`. Sending under the rooms lock keeps commands for one room
    /// in the order their causes happened.
    fn worker(&self, room: &Room) -> &WorkerHandle {
        &self.workers[room.worker % self.workers.len()]
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_room(&self, name: &str, now: Instant) -> Room {
        let (secs, ms) = unix_now();
        let info = proto::Room {
            sid: guid::new_id(guid::ROOM_PREFIX),
            name: name.to_string(),
            empty_timeout: self.defaults.empty_timeout,
            departure_timeout: self.defaults.departure_timeout,
            max_participants: self.defaults.max_participants,
            creation_time: secs,
            creation_time_ms: ms,
            enabled_codecs: enabled_codecs(&self.defaults),
            ..Default::default()
        };
        let worker = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        info!(room = name, sid = info.sid, worker, "room created");
        Room::new(info, now, worker)
    }

    /// Checks the grant for a join (before the WebSocket upgrade).
    pub fn check_join(&self, claims: &Claims) -> Result<(), JoinError> {
        if !claims.video.room_join {
            return Err(JoinError::NoRoomJoin);
        }
        if claims.video.room.is_empty() {
            return Err(JoinError::NoRoom);
        }
        if claims.sub.is_empty() {
            return Err(JoinError::NoIdentity);
        }
        let l = &self.limits;
        let too_long = [
            (
                &claims.video.room,
                l.max_room_name_length,
                "room name",
                "max_room_name_length",
            ),
            (
                &claims.sub,
                l.max_participant_identity_length,
                "identity",
                "max_participant_identity_length",
            ),
            (
                &claims.name,
                l.max_participant_name_length,
                "participant name",
                "max_participant_name_length",
            ),
        ];
        for (value, max, what, key) in too_long {
            if max > 0 && value.len() > max as usize {
                return Err(JoinError::TooLong { what, max, key });
            }
        }
        let rooms = self.lock();
        match rooms.get(&claims.video.room) {
            None if !self.defaults.auto_create => Err(JoinError::RoomNotFound),
            Some(room) if is_full(room, &claims.sub) => Err(JoinError::RoomFull),
            _ => Ok(()),
        }
    }

    /// Adds a participant, replacing one with the same identity.
    pub fn join(&self, req: JoinRequest, now: Instant) -> Result<Joined, JoinError> {
        self.check_join(&req.claims)?;
        let claims = req.claims;
        let mut rooms = self.lock();
        let name = claims.video.room.clone();
        let room = match rooms.entry(name.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                if !self.defaults.auto_create {
                    return Err(JoinError::RoomNotFound);
                }
                v.insert(self.new_room(&name, now))
            }
        };
        if is_full(room, &claims.sub) {
            return Err(JoinError::RoomFull);
        }
        if let Some(old) = room.by_identity(&claims.sub).map(|p| p.info.sid.clone())
            && let Some(p) = room.remove(&old, DisconnectReason::DuplicateIdentity, now)
        {
            debug!(
                room = name,
                identity = claims.sub,
                "replacing duplicate identity"
            );
            p.send(SessionMessage::Leave(leave_request(
                DisconnectReason::DuplicateIdentity,
            )));
        }
        let (secs, ms) = unix_now();
        let permission = permission_from_grant(&claims.video);
        let info = proto::ParticipantInfo {
            sid: guid::new_id(guid::PARTICIPANT_PREFIX),
            identity: claims.sub.clone(),
            name: claims.name.clone(),
            metadata: claims.metadata.clone(),
            attributes: claims.attributes.clone(),
            state: proto::participant_info::State::Joined as i32,
            joined_at: secs,
            joined_at_ms: ms,
            version: 1,
            kind: participant_kind(&claims.kind) as i32,
            client_protocol: req.client_protocol,
            permission: Some(permission.clone()),
            region: self.region.clone(),
            ..Default::default()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let others = room.others(&info.sid);
        let mut participant = Participant::new(info.clone(), tx);
        participant.auto_subscribe = req.auto_subscribe;
        room.add(participant);
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let key = PeerKey {
            room: room.info.sid.clone(),
            participant: info.sid.clone(),
        };
        self.worker(room).send(WorkerCommand::AddPeer {
            key: key.clone(),
            identity: info.identity.clone(),
            can_publish_data: permission.can_publish_data,
            events: media_tx,
        });
        if req.auto_subscribe && permission.can_subscribe {
            for (track, publisher) in room
                .participants()
                .iter()
                .filter(|p| p.info.sid != info.sid)
                .flat_map(|p| p.info.tracks.iter().map(move |t| (t, &p.info.sid)))
            {
                self.worker(room).send(WorkerCommand::Subscribe {
                    key: key.clone(),
                    publisher: publisher.clone(),
                    track_sid: track.sid.clone(),
                });
            }
        }
        let response = proto::JoinResponse {
            room: Some(room.info.clone()),
            participant: Some(info.clone()),
            other_participants: others,
            server_version: COMPATIBLE_SERVER_VERSION.into(),
            ice_servers: Vec::new(),
            // The subscriber connection carries the server's data channels, so a client that
            // may subscribe is connected once it is; LiveKit decides the same way.
            subscriber_primary: permission.can_subscribe,
            server_region: self.region.clone(),
            ping_timeout: 15,
            ping_interval: 5,
            server_info: Some(proto::ServerInfo {
                edition: proto::server_info::Edition::Standard as i32,
                version: COMPATIBLE_SERVER_VERSION.into(),
                protocol: PROTOCOL_VERSION,
                region: self.region.clone(),
                node_id: self.node_id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        info!(
            room = name,
            participant = info.sid,
            identity = info.identity,
            "joined"
        );
        Ok(Joined {
            response,
            room_sid: room.info.sid.clone(),
            room_name: name,
            participant_sid: info.sid,
            worker: room.worker,
            rx,
            media_rx,
        })
    }

    /// Removes a participant (a no-op if it is already gone).
    pub fn leave(&self, room: &str, sid: &str, reason: DisconnectReason) {
        let mut rooms = self.lock();
        if let Some(r) = rooms.get_mut(room)
            && r.remove(sid, reason, Instant::now()).is_some()
        {
            info!(room, participant = sid, ?reason, "left");
        }
    }

    /// Marks a participant's media connection up (state ACTIVE) and tells everyone.
    pub fn set_active(&self, room: &str, sid: &str) {
        let mut rooms = self.lock();
        if let Some(r) = rooms.get_mut(room) {
            r.update_participant(sid, |i| {
                i.state = proto::participant_info::State::Active as i32;
            });
        }
    }

    /// `AddTrackRequest`: checks the grant and returns the track's info (existing for a repeated
    /// `cid`). The track is announced to others once its media arrives.
    pub fn add_track(
        &self,
        room: &str,
        sid: &str,
        req: &proto::AddTrackRequest,
    ) -> Result<proto::TrackInfo, ServiceError> {
        let mut rooms = self.lock();
        let r = rooms
            .get_mut(room)
            .ok_or_else(|| ServiceError::RoomNotFound(room.into()))?;
        let p = r
            .by_sid_mut(sid)
            .ok_or_else(|| ServiceError::ParticipantNotFound(sid.into()))?;
        let perm = p.permission();
        if !perm.can_publish {
            return Err(ServiceError::PermissionDenied("no canPublish grant".into()));
        }
        let media_types = [
            proto::TrackType::Audio as i32,
            proto::TrackType::Video as i32,
        ];
        if !media_types.contains(&req.r#type) {
            return Err(ServiceError::Unsupported(format!(
                "track type {} is not audio or video",
                req.r#type
            )));
        }
        if !perm.can_publish_sources.is_empty() && !perm.can_publish_sources.contains(&req.source) {
            return Err(ServiceError::PermissionDenied(
                "source not allowed by canPublishSources".into(),
            ));
        }
        let max = self.limits.num_tracks as usize;
        if max > 0 && p.info.tracks.len() + p.pending_tracks.len() >= max {
            return Err(ServiceError::InvalidArgument("track limit reached".into()));
        }
        if let Some((_, t)) = p.pending_tracks.iter().find(|(cid, _)| *cid == req.cid) {
            return Ok(t.clone());
        }
        // Deprecated fields (layers, simulcast, stereo, dtx) are still read by older SDKs.
        #[allow(deprecated)]
        let info = proto::TrackInfo {
            sid: guid::new_id(guid::TRACK_PREFIX),
            r#type: req.r#type,
            name: req.name.clone(),
            muted: req.muted,
            width: req.width,
            height: req.height,
            simulcast: req.layers.len() > 1,
            disable_dtx: req.disable_dtx,
            source: req.source,
            layers: req.layers.clone(),
            stereo: req.stereo,
            disable_red: req.disable_red,
            encryption: req.encryption,
            stream: req.stream.clone(),
            audio_features: req.audio_features.clone(),
            backup_codec_policy: req.backup_codec_policy,
            ..Default::default()
        };
        p.pending_tracks.push((req.cid.clone(), info.clone()));
        Ok(info)
    }

    /// The worker reports a new stream from a publisher: it becomes the pending track with
    /// the same `cid` (or the oldest pending track of its kind), everyone is told, and
    /// auto-subscribers get it.
    pub fn producer_created(
        &self,
        room: &str,
        sid: &str,
        media: &ProducedMedia,
    ) -> Option<proto::TrackInfo> {
        let ProducedMedia {
            producer,
            cid,
            kind,
            mid,
            mime,
        } = media;
        let (producer, kind) = (*producer, *kind);
        let mut rooms = self.lock();
        let r = rooms.get_mut(room)?;
        let p = r.by_sid_mut(sid)?;
        let want = if kind == MediaKind::Audio {
            proto::TrackType::Audio
        } else {
            proto::TrackType::Video
        } as i32;
        let idx = p
            .pending_tracks
            .iter()
            .position(|(c, _)| c == cid)
            .or_else(|| p.pending_tracks.iter().position(|(_, t)| t.r#type == want));
        let Some(idx) = idx else {
            debug!(cid, "media for no announced track");
            return None;
        };
        let (_, mut track) = p.pending_tracks.remove(idx);
        track.mid = mid.to_string();
        track.mime_type = mime.to_string();
        let key = PeerKey {
            room: r.info.sid.clone(),
            participant: sid.to_string(),
        };
        let worker = self.worker(r).clone();
        worker.send(WorkerCommand::BindTrack {
            key: key.clone(),
            producer,
            track_sid: track.sid.clone(),
        });
        r.update_participant(sid, |i| {
            i.is_publisher = true;
            i.tracks.push(track.clone());
        });
        for sub in r.participants() {
            let perm = sub.permission();
            if sub.info.sid != sid && sub.auto_subscribe && perm.can_subscribe {
                worker.send(WorkerCommand::Subscribe {
                    key: PeerKey {
                        room: key.room.clone(),
                        participant: sub.info.sid.clone(),
                    },
                    publisher: sid.to_string(),
                    track_sid: track.sid.clone(),
                });
            }
        }
        info!(
            room,
            participant = sid,
            track = track.sid,
            mime,
            "track published"
        );
        Some(track)
    }

    /// A track's media ended: it leaves the participant's info and everyone is told.
    pub fn unpublish_track(&self, room: &str, sid: &str, track_sid: &str) -> bool {
        let mut rooms = self.lock();
        let Some(r) = rooms.get_mut(room) else {
            return false;
        };
        let had = r
            .by_sid(sid)
            .is_some_and(|p| p.info.tracks.iter().any(|t| t.sid == track_sid));
        if had {
            r.update_participant(sid, |i| i.tracks.retain(|t| t.sid != track_sid));
        }
        had
    }

    /// `MuteTrackRequest` from the publisher.
    pub fn set_track_muted(&self, room: &str, sid: &str, track_sid: &str, muted: bool) {
        let mut rooms = self.lock();
        let Some(r) = rooms.get_mut(room) else {
            return;
        };
        let known = r
            .by_sid(sid)
            .is_some_and(|p| p.info.tracks.iter().any(|t| t.sid == track_sid));
        if known {
            r.update_participant(sid, |i| {
                if let Some(t) = i.tracks.iter_mut().find(|t| t.sid == track_sid) {
                    t.muted = muted;
                }
            });
        }
    }

    /// Subscribes or unsubscribes `sid` to tracks (by sid, and by participant's tracks).
    pub fn set_subscriptions(
        &self,
        room: &str,
        sid: &str,
        track_sids: &[String],
        participant_tracks: &[proto::ParticipantTracks],
        subscribe: bool,
    ) -> Result<(), ServiceError> {
        let rooms = self.lock();
        let r = rooms
            .get(room)
            .ok_or_else(|| ServiceError::RoomNotFound(room.into()))?;
        let p = r
            .by_sid(sid)
            .ok_or_else(|| ServiceError::ParticipantNotFound(sid.into()))?;
        if subscribe && !p.permission().can_subscribe {
            return Err(ServiceError::PermissionDenied(
                "no canSubscribe grant".into(),
            ));
        }
        let requested = track_sids.iter().chain(
            participant_tracks
                .iter()
                .flat_map(|pt| pt.track_sids.iter()),
        );
        let key = PeerKey {
            room: r.info.sid.clone(),
            participant: sid.to_string(),
        };
        // Each track on its own, as upstream: an unknown sid does not undo the others.
        let mut missing = None;
        for track_sid in requested {
            let Some((_, publisher)) = r.track(track_sid) else {
                missing.get_or_insert_with(|| track_sid.clone());
                continue;
            };
            if publisher == sid {
                continue;
            }
            let cmd = if subscribe {
                WorkerCommand::Subscribe {
                    key: key.clone(),
                    publisher: publisher.to_string(),
                    track_sid: track_sid.clone(),
                }
            } else {
                WorkerCommand::Unsubscribe {
                    key: key.clone(),
                    track_sid: track_sid.clone(),
                }
            };
            self.worker(r).send(cmd);
        }
        match missing {
            Some(track_sid) => Err(ServiceError::TrackNotFound(track_sid)),
            None => Ok(()),
        }
    }

    /// `UpdateTrackSettings`: `disabled` (or quality OFF) pauses forwarding of those tracks
    /// to `sid`; quality or width/height choose the simulcast layer.
    pub fn update_track_settings(&self, room: &str, sid: &str, req: &proto::UpdateTrackSettings) {
        let rooms = self.lock();
        let Some(r) = rooms.get(room) else {
            return;
        };
        let off = req.quality == proto::VideoQuality::Off as i32;
        for track_sid in &req.track_sids {
            // Unknown sids are ignored: the worker keeps settings only for real tracks.
            let Some((track, _)) = r.track(track_sid) else {
                continue;
            };
            let max_layer = quality::max_layer(track, req);
            self.worker(r).send(WorkerCommand::TrackSettings {
                key: PeerKey {
                    room: r.info.sid.clone(),
                    participant: sid.to_string(),
                },
                track_sid: track_sid.clone(),
                paused: req.disabled || off,
                max_layer,
            });
        }
    }

    /// A client's own metadata/name/attributes update.
    pub fn update_own_metadata(
        &self,
        room: &str,
        sid: &str,
        req: &proto::UpdateParticipantMetadata,
    ) -> Result<(), ServiceError> {
        self.check_metadata(&req.metadata, &req.attributes)?;
        let mut rooms = self.lock();
        let r = rooms
            .get_mut(room)
            .ok_or_else(|| ServiceError::RoomNotFound(room.into()))?;
        let p = r
            .by_sid(sid)
            .ok_or_else(|| ServiceError::ParticipantNotFound(sid.into()))?;
        if !p
            .info
            .permission
            .as_ref()
            .is_some_and(|p| p.can_update_metadata)
        {
            return Err(ServiceError::PermissionDenied(
                "participant may not update its own metadata".into(),
            ));
        }
        r.update_participant(sid, |i| {
            if !req.metadata.is_empty() {
                i.metadata = req.metadata.clone();
            }
            if !req.name.is_empty() {
                i.name = req.name.clone();
            }
            merge_attributes(&mut i.attributes, &req.attributes);
        });
        Ok(())
    }

    fn check_metadata(
        &self,
        metadata: &str,
        attributes: &HashMap<String, String>,
    ) -> Result<(), ServiceError> {
        let max = self.limits.max_metadata_size as usize;
        if max > 0 && metadata.len() > max {
            return Err(ServiceError::InvalidArgument(format!(
                "metadata is {} bytes, over the limit of {max}",
                metadata.len()
            )));
        }
        let max = self.limits.max_attributes_size as usize;
        let size: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        if max > 0 && size > max {
            return Err(ServiceError::InvalidArgument(format!(
                "attributes are {size} bytes, over the limit of {max}"
            )));
        }
        Ok(())
    }

    /// RoomService.CreateRoom: creates the room, or returns it if it exists.
    pub fn create_room(&self, req: &proto::CreateRoomRequest) -> Result<proto::Room, ServiceError> {
        if req.name.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "room name is required".into(),
            ));
        }
        let max = self.limits.max_room_name_length as usize;
        if max > 0 && req.name.len() > max {
            return Err(ServiceError::InvalidArgument(
                "room name is too long".into(),
            ));
        }
        self.check_metadata(&req.metadata, &HashMap::new())?;
        let mut rooms = self.lock();
        if let Some(r) = rooms.get(&req.name) {
            return Ok(r.info.clone());
        }
        let mut room = self.new_room(&req.name, Instant::now());
        if req.empty_timeout > 0 {
            room.info.empty_timeout = req.empty_timeout;
        }
        if req.departure_timeout > 0 {
            room.info.departure_timeout = req.departure_timeout;
        }
        if req.max_participants > 0 {
            room.info.max_participants = req.max_participants;
        }
        room.info.metadata = req.metadata.clone();
        let info = room.info.clone();
        rooms.insert(req.name.clone(), room);
        Ok(info)
    }

    /// RoomService.ListRooms: every room, or those named.
    pub fn list_rooms(&self, names: &[String]) -> Vec<proto::Room> {
        let rooms = self.lock();
        let mut out: Vec<proto::Room> = rooms
            .values()
            .filter(|r| names.is_empty() || names.contains(&r.info.name))
            .map(|r| r.info.clone())
            .collect();
        out.sort_by(|a, b| {
            a.creation_time_ms
                .cmp(&b.creation_time_ms)
                .then(a.name.cmp(&b.name))
        });
        out
    }

    /// RoomService.DeleteRoom: everyone is told to leave and the room is gone.
    pub fn delete_room(&self, name: &str) -> Result<(), ServiceError> {
        let mut rooms = self.lock();
        let mut room = rooms
            .remove(name)
            .ok_or_else(|| ServiceError::RoomNotFound(name.into()))?;
        room.close(DisconnectReason::RoomDeleted, Instant::now());
        info!(room = name, "room deleted");
        Ok(())
    }

    fn with_room<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Room) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let mut rooms = self.lock();
        let room = rooms
            .get_mut(name)
            .ok_or_else(|| ServiceError::RoomNotFound(name.into()))?;
        f(room)
    }

    /// RoomService.ListParticipants (hidden ones included, as upstream's admin view does).
    pub fn list_participants(
        &self,
        room: &str,
    ) -> Result<Vec<proto::ParticipantInfo>, ServiceError> {
        self.with_room(room, |r| {
            Ok(r.participants().iter().map(|p| p.info.clone()).collect())
        })
    }

    /// RoomService.GetParticipant.
    pub fn get_participant(
        &self,
        room: &str,
        identity: &str,
    ) -> Result<proto::ParticipantInfo, ServiceError> {
        self.with_room(room, |r| {
            r.by_identity(identity)
                .map(|p| p.info.clone())
                .ok_or_else(|| ServiceError::ParticipantNotFound(identity.into()))
        })
    }

    /// One of a participant's published tracks.
    pub fn track_info(&self, room: &str, sid: &str, track_sid: &str) -> Option<proto::TrackInfo> {
        let rooms = self.lock();
        let p = rooms.get(room)?.by_sid(sid)?;
        p.info.tracks.iter().find(|t| t.sid == track_sid).cloned()
    }

    /// RoomService.RemoveParticipant: the participant is told to leave.
    pub fn remove_participant(&self, room: &str, identity: &str) -> Result<(), ServiceError> {
        self.with_room(room, |r| {
            let sid = r
                .by_identity(identity)
                .map(|p| p.info.sid.clone())
                .ok_or_else(|| ServiceError::ParticipantNotFound(identity.into()))?;
            if let Some(p) = r.remove(&sid, DisconnectReason::ParticipantRemoved, Instant::now()) {
                p.send(SessionMessage::Leave(leave_request(
                    DisconnectReason::ParticipantRemoved,
                )));
            }
            Ok(())
        })
    }

    /// RoomService.UpdateParticipant: metadata, name, attributes and permission.
    pub fn update_participant(
        &self,
        req: &proto::UpdateParticipantRequest,
    ) -> Result<proto::ParticipantInfo, ServiceError> {
        self.check_metadata(&req.metadata, &req.attributes)?;
        self.with_room(&req.room, |r| {
            let sid = r
                .by_identity(&req.identity)
                .map(|p| p.info.sid.clone())
                .ok_or_else(|| ServiceError::ParticipantNotFound(req.identity.clone()))?;
            r.update_participant(&sid, |i| {
                if !req.metadata.is_empty() {
                    i.metadata = req.metadata.clone();
                }
                if !req.name.is_empty() {
                    i.name = req.name.clone();
                }
                merge_attributes(&mut i.attributes, &req.attributes);
                if let Some(perm) = &req.permission {
                    i.permission = Some(perm.clone());
                }
            })
            .ok_or_else(|| ServiceError::ParticipantNotFound(req.identity.clone()))?;
            if let Some(perm) = &req.permission {
                self.apply_permission(r, &sid, perm);
            }
            r.by_identity(&req.identity)
                .map(|p| p.info.clone())
                .ok_or_else(|| ServiceError::ParticipantNotFound(req.identity.clone()))
        })
    }

    /// A participant's permission changed: what it may no longer do stops now, as upstream
    /// does — tracks it may not publish end, subscriptions it may not have end, and its data
    /// packets are relayed or not.
    fn apply_permission(&self, r: &mut Room, sid: &str, perm: &proto::ParticipantPermission) {
        let worker = self.worker(r);
        let key = PeerKey {
            room: r.info.sid.clone(),
            participant: sid.to_string(),
        };
        let allowed = |source: i32| {
            perm.can_publish
                && (perm.can_publish_sources.is_empty()
                    || perm.can_publish_sources.contains(&source))
        };
        if let Some(p) = r.by_sid_mut(sid) {
            // Announced tracks whose media has not arrived yet are forgotten: it will not
            // be published when it comes.
            p.pending_tracks.retain(|(_, t)| allowed(t.source));
        }
        if let Some(p) = r.by_sid(sid) {
            for t in p.info.tracks.iter().filter(|t| !allowed(t.source)) {
                worker.send(WorkerCommand::CloseTrack {
                    room: r.info.sid.clone(),
                    track_sid: t.sid.clone(),
                });
            }
        }
        if !perm.can_subscribe {
            let others = r.participants().iter().filter(|o| o.info.sid != sid);
            for t in others.flat_map(|o| o.info.tracks.iter()) {
                worker.send(WorkerCommand::Unsubscribe {
                    key: key.clone(),
                    track_sid: t.sid.clone(),
                });
            }
        }
        worker.send(WorkerCommand::SetDataPermission {
            key,
            can_publish_data: perm.can_publish_data,
        });
    }

    /// RoomService.UpdateRoomMetadata.
    pub fn update_room_metadata(
        &self,
        room: &str,
        metadata: &str,
    ) -> Result<proto::Room, ServiceError> {
        self.check_metadata(metadata, &HashMap::new())?;
        self.with_room(room, |r| {
            r.set_metadata(metadata.to_string());
            Ok(r.info.clone())
        })
    }

    /// RoomService.MutePublishedTrack: finds the track among the participant's tracks.
    pub fn mute_published_track(
        &self,
        req: &proto::MuteRoomTrackRequest,
    ) -> Result<proto::TrackInfo, ServiceError> {
        if !req.muted && !self.defaults.enable_remote_unmute {
            return Err(ServiceError::PermissionDenied(
                "remote unmute is not enabled (room.enable_remote_unmute)".into(),
            ));
        }
        self.with_room(&req.room, |r| {
            let p = r
                .by_identity(&req.identity)
                .ok_or_else(|| ServiceError::ParticipantNotFound(req.identity.clone()))?;
            let sid = p.info.sid.clone();
            let mut track = p
                .info
                .tracks
                .iter()
                .find(|t| t.sid == req.track_sid)
                .cloned()
                .ok_or_else(|| ServiceError::TrackNotFound(req.track_sid.clone()))?;
            track.muted = req.muted;
            r.update_participant(&sid, |i| {
                if let Some(t) = i.tracks.iter_mut().find(|t| t.sid == req.track_sid) {
                    t.muted = req.muted;
                }
            });
            if let Some(p) = r.by_sid(&sid) {
                p.send(SessionMessage::signal(
                    proto::signal_response::Message::Mute(proto::MuteTrackRequest {
                        sid: req.track_sid.clone(),
                        muted: req.muted,
                    }),
                ));
            }
            Ok(track)
        })
    }

    /// RoomService.UpdateSubscriptions.
    pub fn update_subscriptions(
        &self,
        req: &proto::UpdateSubscriptionsRequest,
    ) -> Result<(), ServiceError> {
        let sid = self.get_participant(&req.room, &req.identity)?.sid;
        self.set_subscriptions(
            &req.room,
            &sid,
            &req.track_sids,
            &req.participant_tracks,
            req.subscribe,
        )
    }

    /// RoomService.SendData: a user packet from the server to the named participants (all
    /// when none are named).
    pub fn send_data(&self, req: &proto::SendDataRequest) -> Result<(), ServiceError> {
        self.with_room(&req.room, |r| {
            let mut to = Vec::new();
            for identity in &req.destination_identities {
                let p = r
                    .by_identity(identity)
                    .ok_or_else(|| ServiceError::ParticipantNotFound(identity.clone()))?;
                to.push(p.info.sid.clone());
            }
            #[allow(deprecated)]
            for sid in &req.destination_sids {
                r.by_sid(sid)
                    .ok_or_else(|| ServiceError::ParticipantNotFound(sid.clone()))?;
                to.push(sid.clone());
            }
            let kind = if req.kind == proto::data_packet::Kind::Lossy as i32 {
                DataKind::Lossy
            } else {
                DataKind::Reliable
            };
            #[allow(deprecated)]
            let packet = proto::DataPacket {
                kind: req.kind,
                destination_identities: req.destination_identities.clone(),
                value: Some(proto::data_packet::Value::User(proto::UserPacket {
                    payload: req.data.clone(),
                    topic: req.topic.clone(),
                    destination_identities: req.destination_identities.clone(),
                    ..Default::default()
                })),
                ..Default::default()
            };
            self.worker(r).send(WorkerCommand::SendData {
                room: r.info.sid.clone(),
                packet: packet.encode_to_vec(),
                kind,
                to,
            });
            Ok(())
        })
    }

    /// (rooms, participants, published tracks) on this node.
    pub fn counts(&self) -> (usize, usize, usize) {
        let rooms = self.lock();
        let participants = rooms.values().map(|r| r.participants().len()).sum();
        let tracks = rooms
            .values()
            .flat_map(|r| r.participants())
            .map(|p| p.info.tracks.len())
            .sum();
        (rooms.len(), participants, tracks)
    }

    /// Closes rooms whose timeouts ran out; returns their names.
    pub fn sweep(&self, now: Instant) -> Vec<String> {
        let mut rooms = self.lock();
        let expired: Vec<String> = rooms
            .iter()
            .filter(|(_, r)| r.is_expired(now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &expired {
            rooms.remove(name);
            info!(room = name, "room closed (timeout)");
        }
        expired
    }

    /// Tells every participant of every room to leave (server shutdown).
    pub fn close_all(&self, reason: DisconnectReason) {
        let mut rooms = self.lock();
        for r in rooms.values_mut() {
            r.close(reason, Instant::now());
        }
        rooms.clear();
    }
}

fn is_full(room: &Room, identity: &str) -> bool {
    let max = room.info.max_participants as usize;
    // A participant replacing its own duplicate does not need a free place.
    max > 0 && room.visible_count() >= max && room.by_identity(identity).is_none()
}

/// Applies an attribute update: a key with an empty value is deleted.
fn merge_attributes(into: &mut HashMap<String, String>, update: &HashMap<String, String>) {
    for (k, v) in update {
        if v.is_empty() {
            into.remove(k);
        } else {
            into.insert(k.clone(), v.clone());
        }
    }
}

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

fn enabled_codecs(cfg: &RoomConfig) -> Vec<proto::Codec> {
    if !cfg.enabled_codecs.is_empty() {
        return cfg
            .enabled_codecs
            .iter()
            .map(|c| proto::Codec {
                mime: c.mime.clone(),
                fmtp_line: c.fmtp_line.clone(),
            })
            .collect();
    }
    [
        "audio/opus",
        "audio/red",
        "video/VP8",
        "video/H264",
        "video/VP9",
        "video/AV1",
    ]
    .iter()
    .map(|m| proto::Codec {
        mime: (*m).to_string(),
        fmtp_line: String::new(),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::VideoGrants;

    fn manager(cfg: RoomConfig) -> RoomManager {
        let workers = (0..2).map(|_| WorkerHandle::detached().0).collect();
        RoomManager::new(cfg, LimitConfig::default(), String::new(), workers)
    }

    fn claims(identity: &str, room: &str) -> Claims {
        Claims {
            sub: identity.into(),
            video: VideoGrants {
                room_join: true,
                room: room.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn join(m: &RoomManager, identity: &str, room: &str) -> Result<Joined, JoinError> {
        m.join(
            JoinRequest {
                claims: claims(identity, room),
                client_protocol: 16,
                auto_subscribe: true,
            },
            Instant::now(),
        )
    }

    #[test]
    fn join_response_lists_others() {
        let m = manager(RoomConfig::default());
        let a = join(&m, "a", "r").unwrap();
        let b = join(&m, "b", "r").unwrap();
        assert_eq!(a.response.other_participants.len(), 0);
        assert_eq!(b.response.other_participants[0].identity, "a");
        let room = b.response.room.unwrap();
        assert!(room.sid.starts_with("RM_"));
        assert_eq!(room.num_participants, 2);
        assert!(b.response.participant.unwrap().sid.starts_with("PA_"));
        assert!(b.response.subscriber_primary);
    }

    #[test]
    fn duplicate_identity_kicks_the_first() {
        let m = manager(RoomConfig::default());
        let mut a1 = join(&m, "a", "r").unwrap();
        let _a2 = join(&m, "a", "r").unwrap();
        assert_eq!(
            a1.rx.try_recv().unwrap(),
            SessionMessage::Leave(leave_request(DisconnectReason::DuplicateIdentity))
        );
        assert_eq!(m.list_participants("r").unwrap().len(), 1);
    }

    #[test]
    fn refuses_bad_grants_full_rooms_and_missing_rooms() {
        let m = manager(RoomConfig {
            auto_create: false,
            ..Default::default()
        });
        let mut c = claims("a", "r");
        c.video.room_join = false;
        assert_eq!(m.check_join(&c), Err(JoinError::NoRoomJoin));
        assert_eq!(m.check_join(&claims("", "r")), Err(JoinError::NoIdentity));
        assert_eq!(m.check_join(&claims("a", "")), Err(JoinError::NoRoom));
        assert_eq!(join(&m, "a", "r").unwrap_err(), JoinError::RoomNotFound);
        m.create_room(&proto::CreateRoomRequest {
            name: "r".into(),
            max_participants: 1,
            ..Default::default()
        })
        .unwrap();
        join(&m, "a", "r").unwrap();
        assert_eq!(join(&m, "b", "r").unwrap_err(), JoinError::RoomFull);
        // The same identity may still replace itself in a full room.
        join(&m, "a", "r").unwrap();
    }

    #[test]
    fn own_metadata_needs_permission() {
        let m = manager(RoomConfig::default());
        let a = join(&m, "a", "r").unwrap();
        let req = proto::UpdateParticipantMetadata {
            metadata: "x".into(),
            ..Default::default()
        };
        assert!(matches!(
            m.update_own_metadata("r", &a.participant_sid, &req),
            Err(ServiceError::PermissionDenied(_))
        ));
        m.update_participant(&proto::UpdateParticipantRequest {
            room: "r".into(),
            identity: "a".into(),
            permission: Some(proto::ParticipantPermission {
                can_update_metadata: true,
                ..Default::default()
            }),
            attributes: HashMap::from([("k".to_string(), "v".to_string())]),
            ..Default::default()
        })
        .unwrap();
        m.update_own_metadata("r", &a.participant_sid, &req)
            .unwrap();
        let info = m.get_participant("r", "a").unwrap();
        assert_eq!(info.metadata, "x");
        assert_eq!(info.attributes.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn rooms_are_spread_over_workers_and_swept() {
        let m = manager(RoomConfig {
            empty_timeout: 0,
            ..Default::default()
        });
        let a = join(&m, "a", "r1").unwrap();
        let b = join(&m, "b", "r2").unwrap();
        assert_ne!(a.worker, b.worker);
        assert!(m.sweep(Instant::now()).is_empty(), "occupied rooms stay");
        m.create_room(&proto::CreateRoomRequest {
            name: "empty".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(m.sweep(Instant::now()), vec!["empty".to_string()]);
        assert!(m.delete_room("nope").is_err());
        m.delete_room("r1").unwrap();
        assert_eq!(m.list_rooms(&[]).len(), 1);
    }

    #[test]
    fn media_commands_reach_the_room_worker_in_order() {
        let (handle, rx) = WorkerHandle::detached();
        let m = RoomManager::new(
            RoomConfig::default(),
            LimitConfig::default(),
            String::new(),
            vec![handle],
        );
        let a = join(&m, "a", "r").unwrap();
        let b = join(&m, "b", "r").unwrap();
        let mut cmds: Vec<WorkerCommand> = rx.try_iter().collect();
        assert!(
            matches!(&cmds[0], WorkerCommand::AddPeer { key, .. } if key.participant == a.participant_sid)
        );
        assert!(
            matches!(&cmds[1], WorkerCommand::AddPeer { key, .. } if key.participant == b.participant_sid)
        );

        // a announces a track, its media arrives: b (auto-subscribe) gets it.
        let track = m
            .add_track(
                "r",
                &a.participant_sid,
                &proto::AddTrackRequest {
                    cid: "cid1".into(),
                    r#type: proto::TrackType::Audio as i32,
                    ..Default::default()
                },
            )
            .unwrap();
        let media = ProducedMedia {
            producer: aviary_sfu::ProducerId(7),
            cid: "cid1".into(),
            kind: MediaKind::Audio,
            mid: "0".into(),
            mime: "audio/opus".into(),
        };
        let published = m.producer_created("r", &a.participant_sid, &media).unwrap();
        assert_eq!(published.sid, track.sid);
        assert_eq!(published.mime_type, "audio/opus");
        cmds = rx.try_iter().collect();
        assert!(
            matches!(&cmds[0], WorkerCommand::BindTrack { track_sid, .. } if *track_sid == track.sid)
        );
        assert!(
            matches!(&cmds[1], WorkerCommand::Subscribe { key, track_sid, .. }
            if key.participant == b.participant_sid && *track_sid == track.sid)
        );
        assert_eq!(m.get_participant("r", "a").unwrap().tracks.len(), 1);

        // b disables the track: its consumer is paused.
        m.update_track_settings(
            "r",
            &b.participant_sid,
            &proto::UpdateTrackSettings {
                track_sids: vec![track.sid.clone()],
                disabled: true,
                ..Default::default()
            },
        );
        cmds = rx.try_iter().collect();
        assert!(
            matches!(&cmds[..], [WorkerCommand::TrackSettings { paused: true, track_sid, .. }]
            if *track_sid == track.sid)
        );

        // By participant_tracks, with an unknown sid among them: the known track is still
        // subscribed, the unknown one is reported, and a's own track is not sent to a.
        let by_participant = [proto::ParticipantTracks {
            participant_sid: a.participant_sid.clone(),
            track_sids: vec!["TR_missing".into(), track.sid.clone()],
        }];
        let result = m.set_subscriptions("r", &b.participant_sid, &[], &by_participant, true);
        assert_eq!(
            result,
            Err(ServiceError::TrackNotFound("TR_missing".into()))
        );
        cmds = rx.try_iter().collect();
        assert!(
            matches!(&cmds[..], [WorkerCommand::Subscribe { key, track_sid, .. }]
            if key.participant == b.participant_sid && *track_sid == track.sid),
            "{cmds:?}"
        );
        let own = m.set_subscriptions(
            "r",
            &a.participant_sid,
            std::slice::from_ref(&track.sid),
            &[],
            true,
        );
        assert_eq!(own, Ok(()));
        assert_eq!(
            rx.try_iter().count(),
            0,
            "no subscription to one's own track"
        );

        // Taking away a's canPublish ends the track in the worker.
        m.update_participant(&proto::UpdateParticipantRequest {
            room: "r".into(),
            identity: "a".into(),
            permission: Some(proto::ParticipantPermission {
                can_subscribe: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        cmds = rx.try_iter().collect();
        assert!(
            cmds.iter().any(|c| matches!(c, WorkerCommand::CloseTrack { track_sid, .. } if *track_sid == track.sid)),
            "{cmds:?}"
        );
    }

    #[test]
    fn a_track_announced_before_publishing_was_revoked_is_not_published() {
        let m = manager(RoomConfig::default());
        let a = join(&m, "a", "r").unwrap();
        let req = proto::AddTrackRequest {
            cid: "mic".into(),
            r#type: proto::TrackType::Audio as i32,
            ..Default::default()
        };
        m.add_track("r", &a.participant_sid, &req).unwrap();
        m.update_participant(&proto::UpdateParticipantRequest {
            room: "r".into(),
            identity: "a".into(),
            permission: Some(proto::ParticipantPermission::default()),
            ..Default::default()
        })
        .unwrap();
        let media = ProducedMedia {
            producer: aviary_sfu::ProducerId(1),
            cid: "mic".into(),
            kind: MediaKind::Audio,
            mid: "0".into(),
            mime: "audio/opus".into(),
        };
        assert!(
            m.producer_created("r", &a.participant_sid, &media)
                .is_none()
        );
        assert!(m.get_participant("r", "a").unwrap().tracks.is_empty());
    }

    #[test]
    fn publishing_needs_the_grant() {
        let m = manager(RoomConfig::default());
        let a = join(&m, "a", "r").unwrap();
        m.update_participant(&proto::UpdateParticipantRequest {
            room: "r".into(),
            identity: "a".into(),
            permission: Some(proto::ParticipantPermission {
                can_publish: true,
                can_publish_sources: vec![proto::TrackSource::Microphone as i32],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        let camera = proto::AddTrackRequest {
            cid: "c".into(),
            source: proto::TrackSource::Camera as i32,
            ..Default::default()
        };
        assert!(matches!(
            m.add_track("r", &a.participant_sid, &camera),
            Err(ServiceError::PermissionDenied(_))
        ));
        let mic = proto::AddTrackRequest {
            source: proto::TrackSource::Microphone as i32,
            ..camera
        };
        assert!(m.add_track("r", &a.participant_sid, &mic).is_ok());
    }
}
