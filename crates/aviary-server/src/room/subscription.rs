//! Subscribing: which tracks each participant wants (auto-subscribe or explicit requests),
//! which it may have (its grant, and each publisher's `SubscriptionPermission`), and how it
//! wants them (`UpdateTrackSettings`).
//!
//! A subscription is *wanted* by the subscriber and *forwarded* by the worker only while it
//! is also allowed; [`RoomCore::reconcile`] moves one from what it is to what it should be,
//! and is the only place that sends `Subscribe`/`Unsubscribe` or tells a subscriber that a
//! publisher's permission changed.

use livekit_protocol as proto;
use livekit_protocol::signal_response::Message;

use super::core::RoomCore;
use super::limits::Limit;
use super::participant::Subscription;
use super::{ServiceError, quality};
use crate::ids::{ParticipantSid, TrackSid};
use crate::worker::WorkerCommand;

impl RoomCore {
    /// A new participant with auto-subscribe wants every track already published.
    pub(super) fn auto_subscribe_to_existing(&mut self, sub: &ParticipantSid) {
        let Some(p) = self.participant(sub.as_str()) else {
            return;
        };
        if !p.auto_subscribe {
            return;
        }
        let tracks: Vec<(ParticipantSid, TrackSid)> = self
            .participants
            .iter()
            .filter(|o| o.info.sid != sub.as_str())
            .flat_map(|o| {
                o.info
                    .tracks
                    .iter()
                    .map(move |t| (o.sid(), TrackSid::new(t.sid.clone())))
            })
            .collect();
        for (publisher, track) in tracks {
            self.want(sub, &publisher, &track);
        }
    }

    /// A track was published: every other participant with auto-subscribe wants it.
    pub(super) fn auto_subscribe_to_track(&mut self, publisher: &ParticipantSid, track: &TrackSid) {
        let subs: Vec<ParticipantSid> = self
            .participants
            .iter()
            .filter(|p| p.info.sid != publisher.as_str() && p.auto_subscribe)
            .map(|p| p.sid())
            .collect();
        for sub in subs {
            self.want(&sub, publisher, track);
        }
    }

    fn want(&mut self, sub: &ParticipantSid, publisher: &ParticipantSid, track: &TrackSid) {
        let Some(p) = self.participant_mut(sub.as_str()) else {
            return;
        };
        p.subscriptions
            .entry(track.clone())
            .or_insert_with(|| Subscription {
                publisher: publisher.clone(),
                forwarding: false,
                denied: false,
            });
        self.reconcile(sub, track);
    }

    fn unwant(&mut self, sub: &ParticipantSid, track: &TrackSid) {
        let Some(p) = self.participant_mut(sub.as_str()) else {
            return;
        };
        if let Some(s) = p.subscriptions.remove(track)
            && s.forwarding
        {
            self.media(WorkerCommand::Unsubscribe {
                key: self.key(sub),
                track_sid: track.clone(),
            });
            // A place under a subscription limit may have opened.
            if self.has_subscription_limits() {
                self.reconcile_subscriber(sub);
            }
        }
    }

    pub(super) fn has_subscription_limits(&self) -> bool {
        let l = &self.settings.limits;
        l.subscription_limit_audio > 0 || l.subscription_limit_video > 0
    }

    /// Brings one subscription in line with what is wanted and allowed: forwarding starts
    /// or stops, and the subscriber is told when a publisher's permission denies or
    /// allows it (`SubscriptionPermissionUpdate`).
    pub(super) fn reconcile(&mut self, sub: &ParticipantSid, track: &TrackSid) {
        let Some(s) = self
            .participant(sub.as_str())
            .and_then(|p| p.subscriptions.get(track))
            .cloned()
        else {
            return;
        };
        let (Some(subscriber), Some(publisher)) = (
            self.participant(sub.as_str()),
            self.participant(s.publisher.as_str()),
        ) else {
            return;
        };
        let permitted = publisher.permits(subscriber, track.as_str());
        let mut forward = permitted && subscriber.can_subscribe();
        if forward && !s.forwarding {
            // limit.subscription_limit_audio / _video: forwarded tracks of that kind.
            let kind = publisher.track(track.as_str()).map_or(0, |t| t.r#type);
            let limits = &self.settings.limits;
            let max = if kind == proto::TrackType::Audio as i32 {
                limits.subscription_limit_audio
            } else {
                limits.subscription_limit_video
            } as usize;
            let count = |p: &super::participant::Participant| {
                p.subscriptions
                    .iter()
                    .filter(|(t, s)| {
                        s.forwarding
                            && self
                                .participant(s.publisher.as_str())
                                .and_then(|o| o.track(t.as_str()))
                                .is_some_and(|t| t.r#type == kind)
                    })
                    .count()
            };
            if max > 0 && count(subscriber) >= max {
                forward = false;
                let detail = format!("{max} forwarded tracks of this kind");
                self.limit_hit(sub.as_str(), Limit::Subscriptions, &detail);
            }
        }
        let tell = match (permitted, s.denied) {
            (false, false) => Some(false),
            (true, true) => Some(true),
            _ => None,
        };
        if let Some(p) = self.participant_mut(sub.as_str())
            && let Some(entry) = p.subscriptions.get_mut(track)
        {
            entry.forwarding = forward;
            entry.denied = !permitted;
        }
        if let Some(allowed) = tell {
            self.send(
                sub.as_str(),
                Message::SubscriptionPermissionUpdate(proto::SubscriptionPermissionUpdate {
                    participant_sid: s.publisher.to_string(),
                    track_sid: track.to_string(),
                    allowed,
                }),
            );
        }
        let key = self.key(sub);
        match (s.forwarding, forward) {
            (false, true) => self.media(WorkerCommand::Subscribe {
                key,
                publisher: s.publisher.clone(),
                track_sid: track.clone(),
            }),
            (true, false) => self.media(WorkerCommand::Unsubscribe {
                key,
                track_sid: track.clone(),
            }),
            _ => {}
        }
    }

    /// Subscribes or unsubscribes `sub` to tracks (by sid, and by participant's tracks).
    /// Each track on its own, as upstream: an unknown sid does not undo the others, and is
    /// reported.
    pub fn set_subscriptions(
        &mut self,
        sub: &ParticipantSid,
        track_sids: &[String],
        participant_tracks: &[proto::ParticipantTracks],
        subscribe: bool,
    ) -> Result<(), ServiceError> {
        let p = self
            .participant(sub.as_str())
            .ok_or_else(|| ServiceError::ParticipantNotFound(sub.to_string()))?;
        if subscribe && !p.can_subscribe() {
            return Err(ServiceError::PermissionDenied(
                "no canSubscribe grant".into(),
            ));
        }
        let requested: Vec<String> = track_sids
            .iter()
            .chain(
                participant_tracks
                    .iter()
                    .flat_map(|pt| pt.track_sids.iter()),
            )
            .cloned()
            .collect();
        let mut missing = None;
        for track_sid in requested {
            let Some(publisher) = self.track(&track_sid).map(|(_, p)| p.sid()) else {
                missing.get_or_insert(track_sid);
                continue;
            };
            if publisher == *sub {
                continue;
            }
            let track = TrackSid::new(track_sid);
            if subscribe {
                self.want(sub, &publisher, &track);
            } else {
                self.unwant(sub, &track);
            }
        }
        match missing {
            Some(track_sid) => Err(ServiceError::TrackNotFound(track_sid)),
            None => Ok(()),
        }
    }

    /// `UpdateTrackSettings`: `disabled` (or quality OFF) pauses forwarding of those tracks
    /// to `sub`; quality or width/height choose the simulcast layer. Unknown sids are
    /// ignored.
    pub fn update_track_settings(
        &mut self,
        sub: &ParticipantSid,
        req: &proto::UpdateTrackSettings,
    ) {
        let off = req.quality == proto::VideoQuality::Off as i32;
        for track_sid in &req.track_sids {
            let Some((track, _)) = self.track(track_sid) else {
                continue;
            };
            let max_layer = quality::max_layer(track, req);
            self.media(WorkerCommand::TrackSettings {
                key: self.key(sub),
                track_sid: TrackSid::new(track_sid.clone()),
                paused: req.disabled || off,
                max_layer,
            });
        }
    }

    /// `SubscriptionPermission` from a publisher: who may receive its tracks (it replaces
    /// the previous one). Subscribers no longer allowed lose them (and are told); those
    /// allowed again get them back. As upstream, an entry naming nobody voids the whole
    /// update.
    pub fn set_track_permissions(
        &mut self,
        publisher: &ParticipantSid,
        permission: proto::SubscriptionPermission,
    ) {
        let names_nobody = !permission.all_participants
            && permission
                .track_permissions
                .iter()
                .any(|tp| tp.participant_sid.is_empty() && tp.participant_identity.is_empty());
        if names_nobody {
            tracing::debug!(participant = %publisher, "subscription permission names nobody; ignored");
            return;
        }
        let Some(p) = self.participant_mut(publisher.as_str()) else {
            return;
        };
        p.track_permissions = Some(permission);
        self.reconcile_publisher(publisher);
    }

    /// Re-checks every subscription to a publisher's tracks.
    fn reconcile_publisher(&mut self, publisher: &ParticipantSid) {
        let affected: Vec<(ParticipantSid, TrackSid)> = self
            .participants
            .iter()
            .flat_map(|p| {
                p.subscriptions
                    .iter()
                    .filter(|(_, s)| s.publisher == *publisher)
                    .map(move |(t, _)| (p.sid(), t.clone()))
            })
            .collect();
        for (sub, track) in affected {
            self.reconcile(&sub, &track);
        }
    }

    /// A subscriber's grant changed: its subscriptions stop or start with `canSubscribe`.
    pub(super) fn reconcile_subscriber(&mut self, sub: &ParticipantSid) {
        let tracks: Vec<TrackSid> = self
            .participant(sub.as_str())
            .map(|p| p.subscriptions.keys().cloned().collect())
            .unwrap_or_default();
        for track in tracks {
            self.reconcile(sub, &track);
        }
    }
}
