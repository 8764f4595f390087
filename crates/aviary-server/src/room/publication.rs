//! Publishing: tracks announced (`AddTrackRequest`), bound to the media that arrives,
//! muted, and ended.

use livekit_protocol as proto;
use livekit_protocol::signal_response::Message;

use super::core::RoomCore;
use super::limits::{Limit, MAX_ADD_TRACK_BYTES, MAX_LAYERS, MAX_PENDING_TRACKS, MAX_TRACKS};
use super::output::RoomEvent;
use super::{ServiceError, quality};
use crate::guid;
use crate::ids::{ParticipantSid, TrackSid};
use crate::worker::{ProducedMedia, WorkerCommand};
use aviary_sfu::MediaKind;
use prost::Message as _;

impl RoomCore {
    /// `AddTrackRequest`: checks the grant and returns the track's info (the same one for a
    /// repeated `cid`). The track is announced to others once its media arrives.
    pub fn add_track(
        &mut self,
        sid: &ParticipantSid,
        req: &proto::AddTrackRequest,
    ) -> Result<proto::TrackInfo, ServiceError> {
        match self.announce_track(sid, req) {
            Err((Some(limit), e)) => {
                self.limit_hit(sid.as_str(), limit, &e);
                Err(e)
            }
            Err((None, e)) => Err(e),
            Ok(info) => Ok(info),
        }
    }

    fn announce_track(
        &mut self,
        sid: &ParticipantSid,
        req: &proto::AddTrackRequest,
    ) -> Result<proto::TrackInfo, (Option<Limit>, ServiceError)> {
        let max = MAX_TRACKS;
        let refused = |e| (None, e);
        let p = self
            .participant_mut(sid.as_str())
            .ok_or_else(|| refused(ServiceError::ParticipantNotFound(sid.to_string())))?;
        let perm = p.permission();
        if !perm.can_publish {
            return Err(refused(ServiceError::PermissionDenied(
                "no canPublish grant".into(),
            )));
        }
        let kind = match proto::TrackType::try_from(req.r#type) {
            Ok(t @ (proto::TrackType::Audio | proto::TrackType::Video)) => t,
            _ => {
                return Err(refused(ServiceError::Unsupported(format!(
                    "track type {} is not audio or video",
                    req.r#type
                ))));
            }
        };
        // A source names a kind of media: a microphone's grant must not let video through.
        use proto::TrackSource as S;
        let source_kind = match S::try_from(req.source) {
            Ok(S::Camera | S::ScreenShare) => Some(proto::TrackType::Video),
            Ok(S::Microphone | S::ScreenShareAudio) => Some(proto::TrackType::Audio),
            _ => None,
        };
        if source_kind.is_some_and(|k| k != kind) {
            return Err(refused(ServiceError::PermissionDenied(format!(
                "a {} track cannot have source {}",
                kind.as_str_name(),
                req.source
            ))));
        }
        if !perm.can_publish_sources.is_empty() && !perm.can_publish_sources.contains(&req.source) {
            return Err(refused(ServiceError::PermissionDenied(
                "source not allowed by canPublishSources".into(),
            )));
        }
        if let Some((_, t)) = p.pending_tracks.iter().find(|(cid, _)| *cid == req.cid) {
            return Ok(t.clone());
        }
        let size = req.encoded_len();
        if size > MAX_ADD_TRACK_BYTES || req.layers.len() > MAX_LAYERS {
            return Err((
                Some(Limit::TrackSize),
                ServiceError::LimitExceeded(format!(
                    "track description of {size} bytes and {} layers (at most {MAX_ADD_TRACK_BYTES} bytes and {MAX_LAYERS} layers)",
                    req.layers.len()
                )),
            ));
        }
        if p.pending_tracks.len() >= MAX_PENDING_TRACKS {
            return Err((
                Some(Limit::PendingTracks),
                ServiceError::LimitExceeded(format!(
                    "{MAX_PENDING_TRACKS} tracks announced are still waiting for their media"
                )),
            ));
        }
        if p.info.tracks.len() + p.pending_tracks.len() >= max {
            return Err((
                Some(Limit::Tracks),
                ServiceError::LimitExceeded(format!("track limit reached ({max} per participant)")),
            ));
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
    /// subscribers that want it get it.
    pub fn producer_created(
        &mut self,
        sid: &ParticipantSid,
        media: &ProducedMedia,
    ) -> Option<proto::TrackInfo> {
        let want = if media.kind == MediaKind::Audio {
            proto::TrackType::Audio
        } else {
            proto::TrackType::Video
        } as i32;
        let p = self.participant_mut(sid.as_str())?;
        // The announced track must be of the media's kind: its grant was checked for that.
        let idx = p
            .pending_tracks
            .iter()
            .position(|(c, t)| *c == media.cid && t.r#type == want)
            .or_else(|| p.pending_tracks.iter().position(|(_, t)| t.r#type == want));
        let Some(idx) = idx else {
            // Media nobody announced (or may publish) is not forwarded, nor even received.
            tracing::debug!(cid = media.cid, "media for no announced track; closed");
            self.media(WorkerCommand::CloseProducer {
                room: self.sid(),
                producer: media.producer,
            });
            return None;
        };
        let (_, mut track) = p.pending_tracks.remove(idx);
        track.mid = media.mid.clone();
        track.mime_type = media.mime.clone();
        let track_sid = TrackSid::new(track.sid.clone());
        self.media(WorkerCommand::BindTrack {
            key: self.key(sid),
            producer: media.producer,
            track_sid: track_sid.clone(),
            priority: u8::from(track.source == proto::TrackSource::ScreenShare as i32),
        });
        let info = self.update_info(sid.as_str(), |i| {
            i.is_publisher = true;
            i.tracks.push(track.clone());
        })?;
        self.auto_subscribe_to_track(sid, &track_sid);
        // Applications hear of tracks of participants they know have joined (connected):
        // the others' tracks are reported with their join.
        if self
            .participant(sid.as_str())
            .is_some_and(|p| p.session.was_active)
        {
            self.emit(RoomEvent::TrackPublished {
                room: self.info.clone(),
                participant: info,
                track: track.clone(),
            });
        }
        tracing::info!(
            room = self.info.name,
            participant = %sid,
            track = %track_sid,
            mime = media.mime,
            "track published"
        );
        Some(track)
    }

    /// A track's media ended: it leaves its publisher's info, everyone is told, and its
    /// publisher gets `TrackUnpublishedResponse`.
    pub fn track_ended(&mut self, sid: &ParticipantSid, track_sid: &TrackSid) {
        let Some(track) = self
            .participant(sid.as_str())
            .and_then(|p| p.track(track_sid.as_str()))
            .cloned()
        else {
            return;
        };
        let mut freed = Vec::new();
        for p in &mut self.participants {
            if p.subscriptions
                .remove(track_sid.as_str())
                .is_some_and(|s| s.forwarding)
            {
                freed.push(p.sid());
            }
        }
        if self.has_subscription_limits() {
            // Places under a subscription limit opened.
            for sub in freed {
                self.reconcile_subscriber(&sub);
            }
        }
        if let Some(p) = self.participant_mut(sid.as_str()) {
            p.quality_updates.remove(track_sid);
        }
        let Some(info) = self.update_info(sid.as_str(), |i| {
            i.tracks.retain(|t| t.sid != track_sid.as_str());
        }) else {
            return;
        };
        self.send(
            sid.as_str(),
            Message::TrackUnpublished(proto::TrackUnpublishedResponse {
                track_sid: track_sid.to_string(),
            }),
        );
        if self
            .participant(sid.as_str())
            .is_some_and(|p| p.session.was_active)
        {
            self.emit(RoomEvent::TrackUnpublished {
                room: self.info.clone(),
                participant: info,
                track,
            });
        }
    }

    /// `MuteTrackRequest` from the publisher; others are told only of a real change.
    pub fn set_track_muted(&mut self, sid: &ParticipantSid, track_sid: &str, muted: bool) {
        let changes = self
            .participant(sid.as_str())
            .and_then(|p| p.track(track_sid))
            .is_some_and(|t| t.muted != muted);
        if changes {
            self.update_info(sid.as_str(), |i| {
                if let Some(t) = i.tracks.iter_mut().find(|t| t.sid == track_sid) {
                    t.muted = muted;
                }
            });
        }
    }

    /// RoomService.MutePublishedTrack: the publisher's SDK is told to mute (or unmute) it.
    pub fn mute_published_track(
        &mut self,
        req: &proto::MuteRoomTrackRequest,
    ) -> Result<proto::TrackInfo, ServiceError> {
        if !req.muted && !self.settings.defaults.enable_remote_unmute {
            return Err(ServiceError::PermissionDenied(
                "remote unmute is not enabled (room.enable_remote_unmute)".into(),
            ));
        }
        let p = self
            .by_identity(&req.identity)
            .ok_or_else(|| ServiceError::ParticipantNotFound(req.identity.clone()))?;
        let sid = p.sid();
        let mut track = p
            .track(&req.track_sid)
            .cloned()
            .ok_or_else(|| ServiceError::TrackNotFound(req.track_sid.clone()))?;
        track.muted = req.muted;
        self.set_track_muted(&sid, &req.track_sid, req.muted);
        let mute = proto::MuteTrackRequest {
            sid: req.track_sid.clone(),
            muted: req.muted,
        };
        if let Some(p) = self.participant_mut(sid.as_str())
            && p.session.link.is_none()
        {
            // Told when it resumes.
            p.missed_mutes.retain(|m| m.sid != mute.sid);
            p.missed_mutes.push(mute.clone());
        }
        self.send(sid.as_str(), Message::Mute(mute));
        Ok(track)
    }

    /// Dynacast: the publisher is told which layers of its track anyone receives.
    /// Congestion control paused or resumed a track for one subscriber: it hears so, as
    /// LiveKit's SDKs show it (`TrackStreamStateChanged`).
    pub(super) fn stream_state(
        &mut self,
        subscriber: &ParticipantSid,
        track_sid: &TrackSid,
        paused: bool,
    ) {
        let Some((_, publisher)) = self.track(track_sid.as_str()) else {
            return;
        };
        let state = if paused {
            proto::StreamState::Paused
        } else {
            proto::StreamState::Active
        };
        let info = proto::StreamStateInfo {
            participant_sid: publisher.sid().to_string(),
            track_sid: track_sid.to_string(),
            state: state as i32,
        };
        self.send(
            subscriber.as_str(),
            Message::StreamStateUpdate(proto::StreamStateUpdate {
                stream_states: vec![info],
            }),
        );
    }

    pub(super) fn subscribed_layers(
        &mut self,
        sid: &ParticipantSid,
        track_sid: &TrackSid,
        max_layer: Option<usize>,
    ) {
        let Some(track) = self
            .participant(sid.as_str())
            .and_then(|p| p.track(track_sid.as_str()))
        else {
            return;
        };
        let update = quality::subscribed_qualities(track, max_layer);
        if let Some(p) = self.participant_mut(sid.as_str()) {
            p.quality_updates.insert(track_sid.clone(), update.clone());
        }
        self.send(sid.as_str(), Message::SubscribedQualityUpdate(update));
    }

    /// A participant's permission changed: tracks it may no longer publish end (pending
    /// ones are forgotten), as upstream does.
    pub(super) fn enforce_publish_permission(&mut self, sid: &ParticipantSid) {
        let Some(p) = self.participant_mut(sid.as_str()) else {
            return;
        };
        let perm = p.permission();
        let allowed = |source: i32| {
            perm.can_publish
                && (perm.can_publish_sources.is_empty()
                    || perm.can_publish_sources.contains(&source))
        };
        // Announced tracks whose media has not arrived yet: it will not be published.
        p.pending_tracks.retain(|(_, t)| allowed(t.source));
        let closing: Vec<TrackSid> = p
            .info
            .tracks
            .iter()
            .filter(|t| !allowed(t.source))
            .map(|t| TrackSid::new(t.sid.clone()))
            .collect();
        for track_sid in closing {
            self.media(WorkerCommand::CloseTrack {
                room: self.sid(),
                track_sid,
            });
        }
    }
}
