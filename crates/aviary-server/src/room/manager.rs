//! Every room of this node: finding a room by name, creating it (and placing it on a media
//! worker), and RoomService's calls, which run on the room's own task.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livekit_protocol as proto;
use tokio::task::JoinHandle;
use tracing::info;

use super::actor::{self, EventListener, LinkSender, RoomContext, RoomHandle, RoomSummary};
use super::admission::{JoinError, JoinRequest, ResumeError, ResumeRequest};
use super::core::{Now, RoomCore, RoomSettings};
use super::metadata::check_metadata;
use super::session::LinkId;
use super::{DisconnectReason, RoomEndReason, ServiceError};
use crate::auth::Claims;
use crate::guid;
use crate::ids::{Identity, ParticipantSid, RoomName, RoomSid};
use crate::worker::WorkerHandle;

/// How many times a join retries when the room it found closed under it.
const JOIN_ATTEMPTS: usize = 3;

struct RoomEntry {
    handle: RoomHandle,
    summary: Arc<Mutex<RoomSummary>>,
}

type Registry = Arc<Mutex<HashMap<RoomName, RoomEntry>>>;

/// All rooms of this node.
pub struct RoomManager {
    rooms: Registry,
    settings: Arc<RoomSettings>,
    workers: Vec<WorkerHandle>,
    next_worker: AtomicUsize,
    next_link: AtomicU64,
    listeners: Arc<[Arc<dyn EventListener>]>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set at shutdown: no room is made after the rooms were closed.
    closing: AtomicBool,
    /// Where the node's load is read for `limit.num_tracks` and `limit.bytes_per_sec`.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RoomManager {
    /// A manager placing rooms on these media workers (at least one) and telling
    /// `listeners` what happens in them.
    pub fn new(
        settings: RoomSettings,
        workers: Vec<WorkerHandle>,
        listeners: Vec<Arc<dyn EventListener>>,
    ) -> Self {
        assert!(
            !workers.is_empty(),
            "a RoomManager needs at least one worker"
        );
        Self {
            rooms: Arc::default(),
            settings: Arc::new(settings),
            workers,
            next_worker: AtomicUsize::new(0),
            next_link: AtomicU64::new(1),
            listeners: listeners.into(),
            tasks: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            metrics: None,
        }
    }

    /// Reads the node's load from `metrics` for its capacity limits.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Upstream's node capacity: published plus forwarded tracks under `limit.num_tracks`,
    /// bytes in plus out per second under `limit.bytes_per_sec`.
    fn check_capacity(&self) -> Result<(), JoinError> {
        let Some(m) = &self.metrics else {
            return Ok(());
        };
        let l = &self.settings.limits;
        if l.num_tracks > 0 {
            let tracks = self.counts().2 as u64 + m.subscribed_tracks();
            if tracks >= u64::from(l.num_tracks) {
                return Err(JoinError::AtCapacity(format!(
                    "{tracks} tracks, limit.num_tracks {}",
                    l.num_tracks
                )));
            }
        }
        if l.bytes_per_sec > 0.0 {
            let rate = m.byte_rate();
            if rate as f64 >= l.bytes_per_sec {
                return Err(JoinError::AtCapacity(format!(
                    "{rate} bytes/s, limit.bytes_per_sec {}",
                    l.bytes_per_sec
                )));
            }
        }
        Ok(())
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    /// A new signal link id.
    pub fn next_link_id(&self) -> LinkId {
        LinkId(self.next_link.fetch_add(1, Ordering::Relaxed))
    }

    /// Checks a join's grant and names (before the WebSocket upgrade, and again at join).
    pub fn check_grant(&self, claims: &Claims) -> Result<(), JoinError> {
        if !claims.video.room_join {
            return Err(JoinError::NoRoomJoin);
        }
        if claims.video.room.is_empty() {
            return Err(JoinError::NoRoom);
        }
        if claims.sub.is_empty() {
            return Err(JoinError::NoIdentity);
        }
        let l = &self.settings.limits;
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
        Ok(())
    }

    /// Whether a join with these claims would be taken now (before the upgrade, so that
    /// refusals are HTTP statuses the SDKs report).
    pub async fn check_join(&self, claims: &Claims) -> Result<(), JoinError> {
        self.check_grant(claims)?;
        self.check_capacity()?;
        let identity = Identity::new(claims.sub.clone());
        match self.find(&claims.video.room) {
            Some(room) => match room.call(move |core, _| core.check_join(&identity)).await {
                Ok(Err(JoinError::RoomClosed)) | Err(_) => self.may_create(),
                Ok(result) => result,
            },
            None => self.may_create(),
        }
    }

    fn may_create(&self) -> Result<(), JoinError> {
        if self.settings.defaults.auto_create {
            Ok(())
        } else {
            Err(JoinError::RoomNotFound)
        }
    }

    /// Joins a participant on `link`, creating the room if allowed; returns the room and the
    /// participant's sid. The `JoinResponse` is the first message on the link.
    pub async fn join(
        &self,
        req: JoinRequest,
        link: LinkSender,
    ) -> Result<(RoomHandle, ParticipantSid), JoinError> {
        self.check_grant(&req.claims)?;
        let name = req.claims.video.room.clone();
        for _ in 0..JOIN_ATTEMPTS {
            let room = match self.find(&name) {
                Some(room) => room,
                None if self.settings.defaults.auto_create => {
                    self.create(&name, |_| {}).ok_or(JoinError::RoomClosed)?.0
                }
                None => return Err(JoinError::RoomNotFound),
            };
            match room.join(req.clone(), link.clone()).await {
                Err(JoinError::RoomClosed) => self.forget(&room),
                Ok(sid) => return Ok((room, sid)),
                Err(e) => return Err(e),
            }
        }
        Err(JoinError::RoomClosed)
    }

    /// Resumes a session on `link`.
    pub async fn resume(
        &self,
        req: ResumeRequest,
        link: LinkSender,
    ) -> Result<(RoomHandle, ParticipantSid), ResumeError> {
        let Some(room) = self.find(&req.claims.video.room) else {
            return Err(ResumeError::UnknownIdentity(Identity::new(
                req.claims.sub.clone(),
            )));
        };
        let sid = room.resume(req, link).await?;
        Ok((room, sid))
    }

    /// The running room with this name.
    pub fn find(&self, name: &str) -> Option<RoomHandle> {
        let rooms = lock(&self.rooms);
        rooms
            .get(name)
            .filter(|e| !e.handle.is_gone())
            .map(|e| e.handle.clone())
    }

    /// Drops a room from the registry if it is still the one registered under its name.
    fn forget(&self, room: &RoomHandle) {
        let mut rooms = lock(&self.rooms);
        if rooms
            .get(room.name.as_str())
            .is_some_and(|e| e.handle.sid == room.sid)
        {
            rooms.remove(room.name.as_str());
        }
    }

    /// The room with this name, made with `configure` applied if there is none (or only a
    /// dead one). Returns its handle and info; `None` once the server is shutting down.
    fn create(
        &self,
        name: &str,
        configure: impl FnOnce(&mut proto::Room),
    ) -> Option<(RoomHandle, proto::Room)> {
        let mut rooms = lock(&self.rooms);
        if self.closing.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(e) = rooms.get(name).filter(|e| !e.handle.is_gone()) {
            let info = lock(&e.summary).info.clone();
            return Some((e.handle.clone(), info));
        }
        let now = Now::system();
        let defaults = &self.settings.defaults;
        let mut info = proto::Room {
            sid: guid::new_id(guid::ROOM_PREFIX),
            name: name.to_string(),
            empty_timeout: defaults.empty_timeout,
            departure_timeout: defaults.departure_timeout,
            max_participants: defaults.max_participants,
            creation_time: now.unix_secs(),
            creation_time_ms: now.unix_ms,
            enabled_codecs: enabled_codecs(defaults),
            ..Default::default()
        };
        configure(&mut info);
        let worker = self.place();
        let core = RoomCore::new(info.clone(), self.settings.clone(), worker, now);
        let summary = Arc::new(Mutex::new(RoomSummary {
            info: info.clone(),
            ..Default::default()
        }));
        let registry = Arc::downgrade(&self.rooms);
        let on_closed = Arc::new(move |sid: &RoomSid| {
            if let Some(rooms) = registry.upgrade() {
                let mut rooms = lock(&rooms);
                let name = rooms
                    .iter()
                    .find(|(_, e)| e.handle.sid == *sid)
                    .map(|(n, _)| n.clone());
                if let Some(name) = name {
                    rooms.remove(&name);
                }
            }
        });
        let ctx = RoomContext {
            worker: self.workers[worker].clone(),
            listeners: self.listeners.clone(),
            summary: summary.clone(),
            on_closed,
            metrics: self.metrics.clone(),
        };
        let (handle, task) = actor::spawn(core, ctx);
        info!(room = name, sid = info.sid, worker, "room created");
        rooms.insert(
            RoomName::new(name),
            RoomEntry {
                handle: handle.clone(),
                summary,
            },
        );
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Some((handle, info))
    }

    /// The next live worker, round robin.
    fn place(&self) -> usize {
        let n = self.workers.len();
        let start = self.next_worker.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.workers[i].is_alive())
            .unwrap_or(start % n)
    }

    async fn with_room<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(&mut RoomCore, Now) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let room = self
            .find(name)
            .ok_or_else(|| ServiceError::RoomNotFound(name.into()))?;
        room.call(f)
            .await
            .map_err(|_| ServiceError::RoomNotFound(name.into()))?
    }

    /// RoomService.CreateRoom: creates the room, or returns it if it exists.
    pub fn create_room(&self, req: &proto::CreateRoomRequest) -> Result<proto::Room, ServiceError> {
        if req.name.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "room name is required".into(),
            ));
        }
        let max = self.settings.limits.max_room_name_length as usize;
        if max > 0 && req.name.len() > max {
            return Err(ServiceError::InvalidArgument(
                "room name is too long".into(),
            ));
        }
        check_metadata(&self.settings.limits, &req.metadata, &HashMap::new())?;
        let created = self.create(&req.name, |info| {
            if req.empty_timeout > 0 {
                info.empty_timeout = req.empty_timeout;
            }
            if req.departure_timeout > 0 {
                info.departure_timeout = req.departure_timeout;
            }
            if req.max_participants > 0 {
                info.max_participants = req.max_participants;
            }
            info.metadata = req.metadata.clone();
        });
        let (_, info) = created.ok_or(ServiceError::ShuttingDown)?;
        Ok(info)
    }

    /// RoomService.ListRooms: every room, or those named, from what their tasks last
    /// published (no room is asked).
    pub fn list_rooms(&self, names: &[String]) -> Vec<proto::Room> {
        let rooms = lock(&self.rooms);
        let mut out: Vec<proto::Room> = rooms
            .iter()
            .filter(|(n, e)| {
                !e.handle.is_gone() && (names.is_empty() || names.iter().any(|x| *n == x))
            })
            .map(|(_, e)| lock(&e.summary).info.clone())
            .collect();
        out.sort_by(|a, b| {
            a.creation_time_ms
                .cmp(&b.creation_time_ms)
                .then(a.name.cmp(&b.name))
        });
        out
    }

    /// RoomService.DeleteRoom: everyone is told to leave and the room is gone.
    pub async fn delete_room(&self, name: &str) -> Result<(), ServiceError> {
        let room = {
            let mut rooms = lock(&self.rooms);
            rooms
                .remove(name)
                .filter(|e| !e.handle.is_gone())
                .map(|e| e.handle)
                .ok_or_else(|| ServiceError::RoomNotFound(name.into()))?
        };
        room.call(|core, now| {
            core.close(
                now,
                DisconnectReason::RoomDeleted,
                RoomEndReason::RoomEndApiDelete,
            )
        })
        .await
        .map_err(|_| ServiceError::RoomNotFound(name.into()))?;
        info!(room = name, "room deleted");
        Ok(())
    }

    /// RoomService.ListParticipants (hidden ones included, as upstream's admin view does).
    pub async fn list_participants(
        &self,
        room: &str,
    ) -> Result<Vec<proto::ParticipantInfo>, ServiceError> {
        self.with_room(room, |core, _| {
            Ok(core.participants().iter().map(|p| p.info.clone()).collect())
        })
        .await
    }

    /// RoomService.GetParticipant.
    pub async fn get_participant(
        &self,
        room: &str,
        identity: &str,
    ) -> Result<proto::ParticipantInfo, ServiceError> {
        let identity = identity.to_string();
        self.with_room(room, move |core, _| {
            core.by_identity(&identity)
                .map(|p| p.info.clone())
                .ok_or(ServiceError::ParticipantNotFound(identity))
        })
        .await
    }

    /// RoomService.RemoveParticipant: the participant is told to leave and its media ends.
    pub async fn remove_participant(&self, room: &str, identity: &str) -> Result<(), ServiceError> {
        let identity = identity.to_string();
        self.with_room(room, move |core, now| {
            let sid = core
                .by_identity(&identity)
                .map(|p| p.sid())
                .ok_or_else(|| ServiceError::ParticipantNotFound(identity.clone()))?;
            core.kick(now, &sid, DisconnectReason::ParticipantRemoved);
            Ok(())
        })
        .await
    }

    /// RoomService.UpdateParticipant.
    pub async fn update_participant(
        &self,
        req: proto::UpdateParticipantRequest,
    ) -> Result<proto::ParticipantInfo, ServiceError> {
        let room = req.room.clone();
        self.with_room(&room, move |core, _| core.update_participant(&req))
            .await
    }

    /// RoomService.UpdateRoomMetadata.
    pub async fn update_room_metadata(
        &self,
        room: &str,
        metadata: String,
    ) -> Result<proto::Room, ServiceError> {
        self.with_room(room, move |core, _| core.update_room_metadata(&metadata))
            .await
    }

    /// RoomService.MutePublishedTrack.
    pub async fn mute_published_track(
        &self,
        req: proto::MuteRoomTrackRequest,
    ) -> Result<proto::TrackInfo, ServiceError> {
        let room = req.room.clone();
        self.with_room(&room, move |core, _| core.mute_published_track(&req))
            .await
    }

    /// RoomService.UpdateSubscriptions.
    pub async fn update_subscriptions(
        &self,
        req: proto::UpdateSubscriptionsRequest,
    ) -> Result<(), ServiceError> {
        let room = req.room.clone();
        self.with_room(&room, move |core, _| {
            let sid = core
                .by_identity(&req.identity)
                .map(|p| p.sid())
                .ok_or_else(|| ServiceError::ParticipantNotFound(req.identity.clone()))?;
            core.set_subscriptions(
                &sid,
                &req.track_sids,
                &req.participant_tracks,
                req.subscribe,
            )
        })
        .await
    }

    /// RoomService.SendData.
    pub async fn send_data(&self, req: proto::SendDataRequest) -> Result<(), ServiceError> {
        let room = req.room.clone();
        self.with_room(&room, move |core, _| core.send_data(&req))
            .await
    }

    /// (rooms, participants, published tracks) on this node.
    pub fn counts(&self) -> (usize, usize, usize) {
        let rooms = lock(&self.rooms);
        let mut counts = (0, 0, 0);
        for e in rooms.values().filter(|e| !e.handle.is_gone()) {
            let s = lock(&e.summary);
            counts.0 += 1;
            counts.1 += s.participants;
            counts.2 += s.tracks;
        }
        counts
    }

    /// Closes every room (server shutdown): each participant is told, each room reports
    /// `room_finished`. Waits for the rooms' tasks, at most `deadline`.
    pub async fn close_all(&self, deadline: Duration) {
        let rooms: Vec<RoomHandle> = {
            let mut registry = lock(&self.rooms);
            // Under the registry lock: no room can be made between this and the drain.
            self.closing.store(true, Ordering::Relaxed);
            registry.drain().map(|(_, e)| e.handle).collect()
        };
        let closes = rooms.into_iter().map(|room| async move {
            let _ = room
                .call(|core, now| {
                    core.close(
                        now,
                        DisconnectReason::ServerShutdown,
                        RoomEndReason::RoomEndServerShutdown,
                    )
                })
                .await;
        });
        let tasks: Vec<JoinHandle<()>> = lock(&self.tasks).drain(..).collect();
        let all = async {
            futures_util::future::join_all(closes).await;
            futures_util::future::join_all(tasks).await;
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!("rooms did not all close within {deadline:?}");
        }
    }
}

fn enabled_codecs(cfg: &crate::config::RoomConfig) -> Vec<proto::Codec> {
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
