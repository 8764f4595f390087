//! Signal requests from a participant's link, dispatched to the concern that handles them;
//! and the requests that only make sense on a session: `SyncState` after a resume and
//! `SimulateScenario`.

use std::time::Duration;

use livekit_protocol as proto;
use livekit_protocol::signal_request::Message as Req;
use livekit_protocol::signal_response::Message as Resp;

use super::core::{Now, RoomCore};
use super::limits::{Limit, MAX_CANDIDATES, MAX_LIST, MAX_SDP, MAX_TRACK_PERMISSIONS};
use super::session::LinkId;
use super::{DisconnectReason, ServiceError, reconnect_request};
use crate::ids::ParticipantSid;
use crate::worker::WorkerCommand;
use aviary_sfu::TransportDirection;

impl RoomCore {
    /// One request from `from`'s link `link`. Requests from a link that is no longer the
    /// participant's (a resume replaced it) are dropped.
    pub fn handle_signal(
        &mut self,
        now: Now,
        from: &ParticipantSid,
        link: LinkId,
        req: proto::SignalRequest,
    ) {
        let Some(p) = self.participant(from.as_str()) else {
            return;
        };
        if p.session.link != Some(link) {
            tracing::debug!(participant = %from, %link, "request from a replaced link dropped");
            return;
        }
        let Some(msg) = req.message else {
            return;
        };
        if let Some((limit, detail)) = self.over_limit(from, &msg) {
            self.limit_hit(from.as_str(), limit, &detail);
            return;
        }
        match msg {
            Req::Offer(sd) => {
                let perm = self.participant(from.as_str()).map(|p| p.permission());
                if !perm.is_some_and(|p| p.can_publish || p.can_publish_data) {
                    // Nothing to send: no media, no data.
                    tracing::debug!(participant = %from, "publisher offer without canPublish or canPublishData ignored");
                    return;
                }
                let Some(p) = self.participant_mut(from.as_str()) else {
                    return;
                };
                p.session.publisher_offer_ids.push_back(sd.id);
                let red = p.red_tracks();
                self.media(WorkerCommand::PublisherOffer {
                    key: self.key(from),
                    sdp: sd.sdp,
                    red,
                });
            }
            Req::Answer(sd) => {
                // An answer naming an older offer than the last one sent (a resume raced
                // with an offer) would be taken for the newer one's.
                let current = self.participant(from.as_str()).map(|p| p.session.offer_id);
                if sd.id != 0 && Some(sd.id) != current {
                    tracing::debug!(participant = %from, id = sd.id, ?current, "stale answer dropped");
                    return;
                }
                self.media(WorkerCommand::SubscriberAnswer {
                    key: self.key(from),
                    sdp: sd.sdp,
                });
            }
            Req::Trickle(t) => {
                let target = if t.target == proto::SignalTarget::Subscriber as i32 {
                    TransportDirection::Subscriber
                } else {
                    TransportDirection::Publisher
                };
                match candidate_line(&t.candidate_init) {
                    Some(candidate) => self.media(WorkerCommand::Candidate {
                        key: self.key(from),
                        target,
                        candidate,
                    }),
                    None => tracing::debug!(init = t.candidate_init, "unparseable candidate"),
                }
            }
            Req::Leave(_) => self.leave(now, from),
            Req::Ping(ts) => self.send(from.as_str(), Resp::Pong(ts)),
            Req::PingReq(ping) => self.send(
                from.as_str(),
                Resp::PongResp(proto::Pong {
                    last_ping_timestamp: ping.timestamp,
                    timestamp: now.unix_ms,
                }),
            ),
            Req::UpdateMetadata(update) => {
                let result = self.update_own_metadata(from, &update);
                use proto::request_response::Reason;
                // Current SDKs wait for a RequestResponse to every request that has an id.
                let (reason, message) = match result {
                    Ok(()) => (Reason::Ok, String::new()),
                    Err(e @ ServiceError::PermissionDenied(_)) => {
                        (Reason::NotAllowed, e.to_string())
                    }
                    Err(
                        e @ (ServiceError::InvalidArgument(_) | ServiceError::LimitExceeded(_)),
                    ) => (Reason::LimitExceeded, e.to_string()),
                    Err(e) => (Reason::NotFound, e.to_string()),
                };
                if update.request_id != 0 || reason != Reason::Ok {
                    self.send(
                        from.as_str(),
                        Resp::RequestResponse(proto::RequestResponse {
                            request_id: update.request_id,
                            reason: reason as i32,
                            message,
                            ..Default::default()
                        }),
                    );
                }
            }
            Req::AddTrack(req) => match self.add_track(from, &req) {
                Ok(track) => self.send(
                    from.as_str(),
                    Resp::TrackPublished(proto::TrackPublishedResponse {
                        cid: req.cid,
                        track: Some(track),
                    }),
                ),
                Err(e) => {
                    // Told, as upstream does, so that the SDK fails the publish at once
                    // instead of waiting for its timeout.
                    tracing::warn!(cid = req.cid, "track refused: {e}");
                    use proto::request_response::{Reason, Request};
                    let reason = match e {
                        ServiceError::PermissionDenied(_) => Reason::NotAllowed,
                        ServiceError::InvalidArgument(_) | ServiceError::LimitExceeded(_) => {
                            Reason::LimitExceeded
                        }
                        ServiceError::Unsupported(_) => Reason::UnsupportedType,
                        _ => Reason::NotFound,
                    };
                    self.send(
                        from.as_str(),
                        Resp::RequestResponse(proto::RequestResponse {
                            request_id: 0,
                            reason: reason as i32,
                            message: e.to_string(),
                            request: Some(Request::AddTrack(req)),
                        }),
                    );
                }
            },
            Req::Mute(m) => self.set_track_muted(from, &m.sid, m.muted),
            Req::Subscription(sub) => {
                if let Err(e) = self.set_subscriptions(
                    from,
                    &sub.track_sids,
                    &sub.participant_tracks,
                    sub.subscribe,
                ) {
                    tracing::debug!("subscription change refused: {e}");
                }
            }
            Req::TrackSetting(settings) => self.update_track_settings(from, &settings),
            Req::SubscriptionPermission(permission) => {
                self.set_track_permissions(from, permission);
            }
            Req::SyncState(state) => self.sync_state(now, from, state),
            Req::Simulate(scenario) => self.simulate(now, from, scenario),
            other => tracing::debug!(?other, "request not handled yet"),
        }
    }

    /// Whether a request is larger than one client may make the room handle: an SDP past
    /// [`MAX_SDP`], a list past [`MAX_LIST`], more than [`MAX_CANDIDATES`] trickled on a
    /// link. Counts the candidate.
    fn over_limit(&mut self, from: &ParticipantSid, msg: &Req) -> Option<(Limit, String)> {
        let list = |n: usize, what: &str| {
            (n > MAX_LIST).then(|| {
                (
                    Limit::List,
                    format!("{what} of {n} entries (at most {MAX_LIST})"),
                )
            })
        };
        match msg {
            Req::Offer(sd) | Req::Answer(sd) if sd.sdp.len() > MAX_SDP => Some((
                Limit::Sdp,
                format!("an SDP of {} bytes (at most {MAX_SDP})", sd.sdp.len()),
            )),
            Req::Trickle(t) => {
                let target = if t.target == proto::SignalTarget::Subscriber as i32 {
                    1
                } else {
                    0
                };
                let p = self.participant_mut(from.as_str())?;
                p.session.candidates[target] += 1;
                (p.session.candidates[target] > MAX_CANDIDATES).then(|| {
                    (
                        Limit::Candidates,
                        format!("more than {MAX_CANDIDATES} candidates trickled on one link"),
                    )
                })
            }
            Req::Subscription(sub) => list(
                sub.track_sids.len()
                    + sub
                        .participant_tracks
                        .iter()
                        .map(|pt| 1 + pt.track_sids.len())
                        .sum::<usize>(),
                "a subscription update",
            ),
            Req::TrackSetting(s) => list(s.track_sids.len(), "a track settings update"),
            Req::SubscriptionPermission(perm) => {
                let n = perm.track_permissions.len();
                let sids: usize = perm
                    .track_permissions
                    .iter()
                    .map(|t| t.track_sids.len())
                    .sum();
                if n > MAX_TRACK_PERMISSIONS || sids > MAX_LIST * 4 {
                    Some((
                        Limit::List,
                        format!("a subscription permission of {n} entries naming {sids} tracks"),
                    ))
                } else {
                    None
                }
            }
            Req::SyncState(state) => {
                let sub = state.subscription.as_ref();
                let n = state.publish_tracks.len()
                    + state.track_sids_disabled.len()
                    + sub.map_or(0, |s| {
                        s.track_sids.len()
                            + s.participant_tracks
                                .iter()
                                .map(|pt| 1 + pt.track_sids.len())
                                .sum::<usize>()
                    });
                list(n, "a sync state")
            }
            _ => None,
        }
    }

    /// `SyncState`, which a resumed client sends: what it publishes must be what the room
    /// has (else it is told to join again from scratch), and what it receives and has
    /// disabled is applied again.
    fn sync_state(&mut self, now: Now, sid: &ParticipantSid, state: proto::SyncState) {
        let Some(p) = self.participant(sid.as_str()) else {
            return;
        };
        let unknown = state.publish_tracks.iter().find(|pt| {
            let track_sid = pt.track.as_ref().map_or("", |t| t.sid.as_str());
            p.track(track_sid).is_none()
                && !p.pending_tracks.iter().any(|(_, t)| t.sid == track_sid)
        });
        if let Some(pt) = unknown {
            tracing::info!(
                participant = %sid,
                cid = pt.cid,
                "sync state names a track this session does not have; full reconnect"
            );
            self.remove_participant(
                now,
                sid.as_str(),
                DisconnectReason::StateMismatch,
                Some(reconnect_request()),
            );
            return;
        }
        if let Some(sub) = state.subscription {
            let _ = self.set_subscriptions(
                sid,
                &sub.track_sids,
                &sub.participant_tracks,
                sub.subscribe,
            );
        }
        if !state.track_sids_disabled.is_empty() {
            self.update_track_settings(
                sid,
                &proto::UpdateTrackSettings {
                    track_sids: state.track_sids_disabled,
                    disabled: true,
                    ..Default::default()
                },
            );
        }
    }

    /// `SimulateScenario` (test hooks the SDKs expose): each does what upstream does, or
    /// is answered as unsupported.
    fn simulate(&mut self, now: Now, sid: &ParticipantSid, scenario: proto::SimulateScenario) {
        use proto::simulate_scenario::Scenario;
        let Some(scenario) = scenario.scenario else {
            return;
        };
        tracing::info!(participant = %sid, ?scenario, "simulating");
        match scenario {
            Scenario::SpeakerUpdate(secs) => {
                self.announce_speaker(sid, true);
                let until = now.at + Duration::from_secs(secs.max(0) as u64);
                self.simulated_speakers.retain(|(_, s)| s != sid);
                self.simulated_speakers.push((until, sid.clone()));
            }
            Scenario::NodeFailure(_) | Scenario::Migration(_) => {
                // As upstream: the session ends without a word and its link closes; the
                // client's resume then finds nothing and it joins again.
                let reason = if matches!(scenario, Scenario::Migration(_)) {
                    DisconnectReason::Migration
                } else {
                    DisconnectReason::ServerShutdown
                };
                self.remove_participant(now, sid.as_str(), reason, None);
            }
            Scenario::ServerLeave(_) => {
                self.kick(now, sid, DisconnectReason::ServerShutdown);
            }
            Scenario::LeaveRequestFullReconnect(_) => {
                self.remove_participant(
                    now,
                    sid.as_str(),
                    DisconnectReason::StateMismatch,
                    Some(reconnect_request()),
                );
            }
            Scenario::DisconnectSignalOnResume(_) => {
                if let Some(p) = self.participant_mut(sid.as_str()) {
                    p.session.disconnect_on_resume = Some(now.at + SIMULATION_WINDOW);
                }
            }
            Scenario::DisconnectSignalOnResumeNoMessages(_) => {
                if let Some(p) = self.participant_mut(sid.as_str()) {
                    p.session.refuse_resumes = Some((now.at + SIMULATION_WINDOW, 3));
                }
            }
            Scenario::SubscriberBandwidth(bps) => {
                // As upstream: the subscriber's bandwidth is taken to be this (0 clears it).
                self.media(WorkerCommand::SubscriberBandwidth {
                    key: self.key(sid),
                    bps: u64::try_from(bps).ok().filter(|&b| b > 0),
                });
            }
            Scenario::SwitchCandidateProtocol(_) => {
                self.send(
                    sid.as_str(),
                    Resp::RequestResponse(proto::RequestResponse {
                        reason: proto::request_response::Reason::UnsupportedType as i32,
                        message: format!("scenario {scenario:?} is not supported by this server"),
                        ..Default::default()
                    }),
                );
            }
        }
    }

    /// Tells everyone that `sid` started (level 0.9) or stopped speaking.
    fn announce_speaker(&mut self, sid: &ParticipantSid, active: bool) {
        let speaker = proto::SpeakerInfo {
            sid: sid.to_string(),
            level: if active { 0.9 } else { 0.0 },
            active,
        };
        let targets: Vec<ParticipantSid> = self.participants.iter().map(|p| p.sid()).collect();
        for to in targets {
            self.send(
                to.as_str(),
                Resp::SpeakersChanged(proto::SpeakersChanged {
                    speakers: vec![speaker.clone()],
                }),
            );
        }
    }

    /// Simulated speakers whose time is up stop speaking.
    pub(super) fn end_simulated_speakers(&mut self, now: Now) {
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.simulated_speakers)
            .into_iter()
            .partition(|(until, _)| *until <= now.at);
        self.simulated_speakers = keep;
        for (_, sid) in done {
            self.announce_speaker(&sid, false);
        }
    }
}

/// How long a simulated signal break on resume stays armed (upstream's).
const SIMULATION_WINDOW: Duration = Duration::from_secs(5);

/// Pulls the `candidate:...` line out of a trickled `RTCIceCandidateInit` JSON.
fn candidate_line(init: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(init).ok()?;
    Some(v.get("candidate")?.as_str()?.to_string())
}
