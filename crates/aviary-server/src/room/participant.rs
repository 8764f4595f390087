//! A participant as the room sees it: its public info, its session, what it publishes and
//! what it receives.

use std::collections::HashMap;

use livekit_protocol as proto;

use super::session::Session;
use crate::ids::{Identity, ParticipantSid, TrackSid};
use crate::worker::RedTracks;

/// One track a participant wants to receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Who publishes it.
    pub publisher: ParticipantSid,
    /// The worker was asked to forward it (wanted, permitted, and allowed by the grant).
    pub forwarding: bool,
    /// The subscriber was told it may not have it (`SubscriptionPermissionUpdate`).
    pub denied: bool,
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
    /// What outlives its WebSocket.
    pub session: Session,
    /// Tracks it wants, by sid: all of them with auto-subscribe, else those it asked for.
    pub subscriptions: HashMap<TrackSid, Subscription>,
    /// Who may receive its tracks (`SubscriptionPermission`); `None` is everyone.
    pub track_permissions: Option<proto::SubscriptionPermission>,
    /// The last `SubscribedQualityUpdate` per published track (dynacast), sent again on a
    /// resume: the worker tells only changes.
    pub quality_updates: HashMap<TrackSid, proto::SubscribedQualityUpdate>,
    /// The connection qualities last sent to it: (participant sid, quality).
    pub qualities_sent: Vec<(String, i32)>,
    /// RoomService mutes of its tracks made while no link was attached, told on resume.
    pub missed_mutes: Vec<proto::MuteTrackRequest>,
}

impl Participant {
    /// A participant with its session.
    pub fn new(info: proto::ParticipantInfo, session: Session) -> Self {
        Self {
            info,
            pending_tracks: Vec::new(),
            auto_subscribe: true,
            session,
            subscriptions: HashMap::new(),
            track_permissions: None,
            quality_updates: HashMap::new(),
            qualities_sent: Vec::new(),
            missed_mutes: Vec::new(),
        }
    }

    /// Its sid.
    pub fn sid(&self) -> ParticipantSid {
        ParticipantSid::new(self.info.sid.clone())
    }

    /// Its identity.
    pub fn identity(&self) -> Identity {
        Identity::new(self.info.identity.clone())
    }

    /// The permission it has now.
    pub fn permission(&self) -> proto::ParticipantPermission {
        self.info.permission.clone().unwrap_or_default()
    }

    /// Whether each of its audio tracks, announced or published, wants RED.
    pub fn red_tracks(&self) -> RedTracks {
        let audio = proto::TrackType::Audio as i32;
        RedTracks {
            cids: (self.pending_tracks.iter())
                .filter(|(_, t)| t.r#type == audio)
                .map(|(cid, t)| (cid.clone(), !t.disable_red))
                .collect(),
            mids: (self.info.tracks.iter())
                .filter(|t| t.r#type == audio && !t.mid.is_empty())
                .map(|t| (t.mid.clone(), !t.disable_red))
                .collect(),
        }
    }

    /// Hidden participants (recorders, agents that asked for it) are not shown to others.
    pub fn hidden(&self) -> bool {
        self.info.permission.as_ref().is_some_and(|p| p.hidden)
    }

    /// Whether its grant lets it subscribe.
    pub fn can_subscribe(&self) -> bool {
        self.info
            .permission
            .as_ref()
            .is_some_and(|p| p.can_subscribe)
    }

    /// One of its published tracks.
    pub fn track(&self, sid: &str) -> Option<&proto::TrackInfo> {
        self.info.tracks.iter().find(|t| t.sid == sid)
    }

    /// Whether `subscriber` may receive its track `track`, by its `SubscriptionPermission`.
    /// As upstream: a permission names the subscriber by sid or by identity, and allows all
    /// its tracks or those listed.
    pub fn permits(&self, subscriber: &Participant, track: &str) -> bool {
        let Some(perm) = &self.track_permissions else {
            return true;
        };
        if perm.all_participants {
            return true;
        }
        perm.track_permissions.iter().any(|tp| {
            let names = (!tp.participant_sid.is_empty()
                && tp.participant_sid == subscriber.info.sid)
                || (!tp.participant_identity.is_empty()
                    && tp.participant_identity == subscriber.info.identity);
            names && (tp.all_tracks || tp.track_sids.iter().any(|t| t == track))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::session::LinkId;

    fn participant(sid: &str, identity: &str) -> Participant {
        Participant::new(
            proto::ParticipantInfo {
                sid: sid.into(),
                identity: identity.into(),
                ..Default::default()
            },
            Session::new(LinkId(0), std::time::Instant::now()),
        )
    }

    #[test]
    fn permissions_name_subscribers_by_sid_or_identity() {
        let mut publisher = participant("PA_p", "pub");
        let by_sid = participant("PA_a", "a");
        let by_identity = participant("PA_b", "b");
        let other = participant("PA_c", "c");
        assert!(
            publisher.permits(&other, "TR_1"),
            "no permission set: everyone"
        );
        publisher.track_permissions = Some(proto::SubscriptionPermission {
            all_participants: false,
            track_permissions: vec![
                proto::TrackPermission {
                    participant_sid: "PA_a".into(),
                    all_tracks: true,
                    ..Default::default()
                },
                proto::TrackPermission {
                    participant_identity: "b".into(),
                    track_sids: vec!["TR_2".into()],
                    ..Default::default()
                },
            ],
        });
        assert!(publisher.permits(&by_sid, "TR_1"));
        assert!(!publisher.permits(&by_identity, "TR_1"));
        assert!(publisher.permits(&by_identity, "TR_2"));
        assert!(!publisher.permits(&other, "TR_2"));
        publisher
            .track_permissions
            .as_mut()
            .unwrap()
            .all_participants = true;
        assert!(publisher.permits(&other, "TR_1"));
    }
}
