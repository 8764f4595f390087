//! What the media worker reports about a room: offers and answers to relay, connections
//! coming up, lost and gone, tracks starting and ending, speakers and wanted layers.
//!
//! These change room state, so they come to the room, never through a socket's task.

use livekit_protocol as proto;
use livekit_protocol::signal_response::Message;

use super::core::{Now, RoomCore};
use super::output::RoomEvent;
use super::{DisconnectReason, reconnect_request};
use crate::ids::ParticipantSid;
use crate::worker::MediaEvent;
use aviary_sfu::TransportDirection;

fn slot(direction: TransportDirection) -> usize {
    match direction {
        TransportDirection::Publisher => proto::SignalTarget::Publisher as usize,
        TransportDirection::Subscriber => proto::SignalTarget::Subscriber as usize,
    }
}

impl RoomCore {
    /// One event from the room's media worker.
    pub fn handle_media(&mut self, now: Now, event: MediaEvent) {
        match event {
            MediaEvent::SubscriberOffer {
                participant,
                sdp,
                ice_restart,
            } => {
                let Some(p) = self.participant_mut(participant.as_str()) else {
                    return;
                };
                let Some(link) = p.session.link else {
                    // Offered again on resume (the worker keeps it in flight).
                    return;
                };
                let hash = sdp_hash(&sdp);
                if p.session.last_offer == Some((link, hash)) {
                    tracing::debug!(participant = %participant, "the same offer again on this link; not sent twice");
                    return;
                }
                p.session.last_offer = Some((link, hash));
                p.session.offer_id += 1;
                let id = p.session.offer_id;
                if ice_restart {
                    tracing::debug!(participant = %participant, "ice restart offer");
                }
                self.send(
                    participant.as_str(),
                    Message::Offer(proto::SessionDescription {
                        r#type: "offer".into(),
                        sdp: sdp.clone(),
                        id,
                        ..Default::default()
                    }),
                );
                self.trickle_once(&participant, &sdp, proto::SignalTarget::Subscriber);
            }
            MediaEvent::PublisherAnswer { participant, sdp } => {
                let Some(p) = self.participant_mut(participant.as_str()) else {
                    return;
                };
                let id = p.session.publisher_offer_ids.pop_front().unwrap_or(0);
                self.send(
                    participant.as_str(),
                    Message::Answer(proto::SessionDescription {
                        r#type: "answer".into(),
                        sdp: sdp.clone(),
                        id,
                        ..Default::default()
                    }),
                );
                self.trickle_once(&participant, &sdp, proto::SignalTarget::Publisher);
            }
            MediaEvent::Connected {
                participant,
                direction,
            } => {
                let Some(p) = self.participant_mut(participant.as_str()) else {
                    return;
                };
                let was_lost = p.session.media_lost[slot(direction)].take().is_some();
                if was_lost {
                    tracing::info!(participant = %participant, ?direction, "media back");
                }
                if p.session.media_lost.iter().all(Option::is_none) {
                    p.session.grace_extended = false;
                }
                if !p.session.was_active {
                    p.session.was_active = true;
                    if let Some(info) = self.update_info(participant.as_str(), |i| {
                        i.state = proto::participant_info::State::Active as i32;
                    }) {
                        // As upstream: an application hears of a participant once it is
                        // really connected, and of its tracks after that.
                        let tracks = info.tracks.clone();
                        self.emit(RoomEvent::ParticipantJoined {
                            room: self.info.clone(),
                            participant: info.clone(),
                        });
                        for track in tracks {
                            self.emit(RoomEvent::TrackPublished {
                                room: self.info.clone(),
                                participant: info.clone(),
                                track,
                            });
                        }
                    }
                }
            }
            MediaEvent::Disconnected {
                participant,
                direction,
            } => {
                let Some(p) = self.participant_mut(participant.as_str()) else {
                    return;
                };
                let lost = &mut p.session.media_lost[slot(direction)];
                if lost.is_some() {
                    return;
                }
                *lost = Some(now.at);
                tracing::warn!(
                    participant = %participant,
                    ?direction,
                    "media connection lost; the client may resume"
                );
                // As upstream: a client with a link is asked to resume (it then restarts
                // ICE) and its link closes; one without will resume by itself or time out.
                let link = p.session.link;
                self.send(
                    participant.as_str(),
                    Message::Leave(proto::LeaveRequest {
                        can_reconnect: true,
                        reason: DisconnectReason::ConnectionTimeout as i32,
                        action: proto::leave_request::Action::Resume as i32,
                        regions: None,
                    }),
                );
                if let Some(link) = link {
                    if let Some(p) = self.participant_mut(participant.as_str()) {
                        p.session.detach(link, now.at);
                    }
                    self.close_link(link);
                }
            }
            MediaEvent::Closed {
                participant,
                direction,
            } => {
                // The transport is gone (DTLS failed, str0m gave up): nothing to resume.
                if self.participant(participant.as_str()).is_some() {
                    tracing::warn!(
                        participant = %participant,
                        ?direction,
                        "media connection closed; asking the client to rejoin"
                    );
                    self.remove_participant(
                        now,
                        participant.as_str(),
                        DisconnectReason::StateMismatch,
                        Some(reconnect_request()),
                    );
                }
            }
            MediaEvent::NegotiationFailed {
                participant,
                direction,
                reason,
            } => {
                tracing::warn!(participant = %participant, ?direction, reason, "negotiation failed");
                if direction == TransportDirection::Publisher
                    && let Some(p) = self.participant_mut(participant.as_str())
                {
                    // That offer will get no answer; the next answer belongs to the next offer.
                    p.session.publisher_offer_ids.pop_front();
                }
            }
            MediaEvent::ProducerCreated { participant, media } => {
                self.producer_created(&participant, &media);
            }
            MediaEvent::TrackEnded {
                participant,
                track_sid,
            } => self.track_ended(&participant, &track_sid),
            MediaEvent::SubscribedLayers {
                participant,
                track_sid,
                max_layer,
            } => self.subscribed_layers(&participant, &track_sid, max_layer),
            MediaEvent::StreamState {
                participant,
                track_sid,
                paused,
            } => self.stream_state(&participant, &track_sid, paused),
            MediaEvent::ConnectionQuality(infos) => self.connection_quality(&infos),
            MediaEvent::Speakers(speakers) => {
                // Hidden participants are not shown to others, speaking or not.
                let speakers: Vec<proto::SpeakerInfo> = speakers
                    .into_iter()
                    .filter(|s| self.participant(&s.sid).is_some_and(|p| !p.hidden()))
                    .collect();
                if speakers.is_empty() {
                    return;
                }
                let targets: Vec<ParticipantSid> =
                    self.participants.iter().map(|p| p.sid()).collect();
                for to in targets {
                    self.send(
                        to.as_str(),
                        Message::SpeakersChanged(proto::SpeakersChanged {
                            speakers: speakers.clone(),
                        }),
                    );
                }
            }
            MediaEvent::RoomFailed => {
                tracing::error!(room = self.info.name, "media failed; everyone rejoins");
                let sids: Vec<ParticipantSid> = self.participants.iter().map(|p| p.sid()).collect();
                for sid in sids {
                    self.remove_participant(
                        now,
                        sid.as_str(),
                        DisconnectReason::StateMismatch,
                        Some(reconnect_request()),
                    );
                }
            }
        }
    }

    /// Connection qualities scored by the media plane: each participant hears its own and
    /// those of the participants whose tracks it subscribes to, whenever one of them moved.
    fn connection_quality(&mut self, infos: &[proto::ConnectionQualityInfo]) {
        let sids: Vec<ParticipantSid> = self.participants.iter().map(|p| p.sid()).collect();
        for sid in sids {
            let Some(p) = self.participant(sid.as_str()) else {
                continue;
            };
            let mut shown: Vec<String> = vec![sid.to_string()];
            for track in p.subscriptions.keys() {
                if let Some((_, publisher)) = self.track(track.as_str())
                    && !shown.contains(&publisher.info.sid)
                {
                    shown.push(publisher.info.sid.clone());
                }
            }
            let updates: Vec<proto::ConnectionQualityInfo> = shown
                .iter()
                .filter_map(|s| infos.iter().find(|i| &i.participant_sid == s).cloned())
                .collect();
            let summary: Vec<(String, i32)> = updates
                .iter()
                .map(|u| (u.participant_sid.clone(), u.quality))
                .collect();
            if updates.is_empty() || summary == p.qualities_sent {
                continue;
            }
            if let Some(p) = self.participant_mut(sid.as_str()) {
                p.qualities_sent = summary;
            }
            self.send(
                sid.as_str(),
                Message::ConnectionQuality(proto::ConnectionQualityUpdate { updates }),
            );
        }
    }

    /// Our candidates are in every offer and answer; they are also trickled once per ICE
    /// session (once per local ufrag: again after an ICE restart), as LiveKit does, for
    /// clients that only look at trickled candidates.
    fn trickle_once(&mut self, sid: &ParticipantSid, sdp: &str, target: proto::SignalTarget) {
        let Some(p) = self.participant_mut(sid.as_str()) else {
            return;
        };
        let ufrag = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .unwrap_or("")
            .trim_end();
        let trickled = &mut p.session.trickled_ufrag[target as usize];
        if trickled == ufrag {
            return;
        }
        *trickled = ufrag.to_string();
        // Bundled: every candidate belongs to the first m-line.
        let mid = sdp
            .lines()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .unwrap_or("0")
            .trim_end();
        let inits: Vec<String> = sdp
            .lines()
            .filter_map(|l| l.strip_prefix("a=candidate:"))
            .map(|line| {
                serde_json::json!({
                    "candidate": format!("candidate:{}", line.trim_end()),
                    "sdpMid": mid,
                    "sdpMLineIndex": 0,
                })
                .to_string()
            })
            .collect();
        for candidate_init in inits {
            self.send(
                sid.as_str(),
                Message::Trickle(proto::TrickleRequest {
                    candidate_init,
                    target: target as i32,
                    ..Default::default()
                }),
            );
        }
    }
}

fn sdp_hash(sdp: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sdp.hash(&mut h);
    h.finish()
}
