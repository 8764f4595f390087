//! The room core's rules, asserted on its outputs: no sockets, no channels, simulated time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as proto;
use livekit_protocol::signal_request::Message as Req;
use livekit_protocol::signal_response::Message as Resp;

use super::limits;
use super::*;
use crate::auth::{Claims, VideoGrants};
use crate::config::{LimitConfig, RoomConfig};
use crate::ids::{ParticipantSid, TrackSid};
use crate::worker::{MediaEvent, ProducedMedia, WorkerCommand};
use aviary_sfu::{MediaKind, ProducerId, TransportDirection};

struct Clock {
    t0: Instant,
    at: Duration,
}

impl Clock {
    fn new() -> Self {
        Self {
            t0: Instant::now(),
            at: Duration::ZERO,
        }
    }

    fn now(&self) -> Now {
        Now {
            at: self.t0 + self.at,
            unix_ms: 1_700_000_000_000 + self.at.as_millis() as i64,
        }
    }

    fn advance(&mut self, d: Duration) -> Now {
        self.at += d;
        self.now()
    }
}

fn room_with(defaults: RoomConfig, clock: &Clock) -> RoomCore {
    let settings = RoomSettings::new(
        defaults,
        LimitConfig::default(),
        String::new(),
        "ND_t".into(),
    );
    let info = proto::Room {
        sid: "RM_test".into(),
        name: "r".into(),
        empty_timeout: 300,
        departure_timeout: 20,
        ..Default::default()
    };
    RoomCore::new(info, Arc::new(settings), 0, clock.now())
}

fn room(clock: &Clock) -> RoomCore {
    let mut r = room_with(RoomConfig::default(), clock);
    drain(&mut r);
    r
}

fn drain(r: &mut RoomCore) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn claims(identity: &str) -> Claims {
    Claims {
        sub: identity.into(),
        video: VideoGrants {
            room_join: true,
            room: "r".into(),
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn join(r: &mut RoomCore, clock: &Clock, identity: &str, link: u64) -> ParticipantSid {
    r.join(
        clock.now(),
        JoinRequest {
            claims: claims(identity),
            client_protocol: 16,
            auto_subscribe: true,
        },
        LinkId(link),
    )
    .expect("join")
}

/// Signal messages sent to `link`, in order.
fn signals(out: &[Output], link: u64) -> Vec<Resp> {
    out.iter()
        .filter_map(|o| match o {
            Output::Signal {
                link: l, message, ..
            } if *l == LinkId(link) => message.message.clone(),
            _ => None,
        })
        .collect()
}

fn commands(out: &[Output]) -> Vec<&WorkerCommand> {
    out.iter()
        .filter_map(|o| match o {
            Output::Media(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn events(out: &[Output]) -> Vec<&'static str> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.name()),
            _ => None,
        })
        .collect()
}

fn closes(out: &[Output], link: u64) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::CloseLink(l) if *l == LinkId(link)))
}

fn updates_of(out: &[Output], link: u64) -> Vec<proto::ParticipantInfo> {
    signals(out, link)
        .into_iter()
        .filter_map(|m| match m {
            Resp::Update(u) => Some(u.participants),
            _ => None,
        })
        .flatten()
        .collect()
}

fn connect(r: &mut RoomCore, clock: &Clock, sid: &ParticipantSid) {
    r.handle_media(
        clock.now(),
        MediaEvent::Connected {
            participant: sid.clone(),
            direction: TransportDirection::Subscriber,
        },
    );
}

/// `sid` publishes an audio track; returns its sid.
fn publish(r: &mut RoomCore, clock: &Clock, sid: &ParticipantSid, cid: &str) -> TrackSid {
    let link = r.participant(sid.as_str()).unwrap().session.link.unwrap();
    r.handle_signal(
        clock.now(),
        sid,
        link,
        proto::SignalRequest {
            message: Some(Req::AddTrack(proto::AddTrackRequest {
                cid: cid.into(),
                r#type: proto::TrackType::Audio as i32,
                ..Default::default()
            })),
        },
    );
    r.handle_media(
        clock.now(),
        MediaEvent::ProducerCreated {
            participant: sid.clone(),
            media: ProducedMedia {
                producer: ProducerId(7),
                cid: cid.into(),
                kind: MediaKind::Audio,
                mid: "0".into(),
                mime: "audio/opus".into(),
            },
        },
    );
    let track = r
        .participant(sid.as_str())
        .unwrap()
        .info
        .tracks
        .last()
        .unwrap();
    TrackSid::new(track.sid.clone())
}

fn request(r: &mut RoomCore, clock: &Clock, sid: &ParticipantSid, link: u64, msg: Req) {
    r.handle_signal(
        clock.now(),
        sid,
        LinkId(link),
        proto::SignalRequest { message: Some(msg) },
    );
}

#[test]
fn a_join_answers_first_on_its_link_and_tells_the_others() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    drain(&mut r);
    let b = join(&mut r, &clock, "b", 2);
    let out = drain(&mut r);
    let to_b = signals(&out, 2);
    let Some(Resp::Join(response)) = to_b.first() else {
        panic!("the JoinResponse comes first: {to_b:?}");
    };
    assert_eq!(response.other_participants[0].identity, "a");
    assert_eq!(response.participant.as_ref().unwrap().sid, b.as_str());
    assert!(response.subscriber_primary);
    assert_eq!(updates_of(&out, 1)[0].sid, b.as_str(), "a hears of b");
    assert!(
        matches!(commands(&out)[..], [WorkerCommand::AddPeer { key, .. }] if key.participant == b),
        "{:?}",
        commands(&out)
    );
    assert!(
        events(&out).is_empty(),
        "joined is reported once media connects"
    );
    connect(&mut r, &clock, &b);
    let out = drain(&mut r);
    assert_eq!(events(&out), ["participant_joined"]);
    let seen_by_a = updates_of(&out, 1);
    assert_eq!(
        seen_by_a[0].state,
        proto::participant_info::State::Active as i32
    );
    let _ = a;
}

#[test]
fn a_duplicate_identity_replaces_the_first_session_media_included() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let first = join(&mut r, &clock, "a", 1);
    connect(&mut r, &clock, &first);
    drain(&mut r);
    let second = join(&mut r, &clock, "a", 2);
    let out = drain(&mut r);
    let leave = signals(&out, 1);
    assert!(
        matches!(&leave[..], [Resp::Leave(l)] if l.reason == DisconnectReason::DuplicateIdentity as i32),
        "{leave:?}"
    );
    assert!(closes(&out, 1));
    assert!(
        commands(&out)
            .iter()
            .any(|c| matches!(c, WorkerCommand::RemovePeer { key } if key.participant == first))
    );
    assert_eq!(events(&out), ["participant_left"]);
    assert_eq!(r.participants().len(), 1);
    assert_eq!(r.participants()[0].sid(), second);
}

#[test]
fn a_closed_link_only_detaches_and_a_resume_catches_up_in_order() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    let b = join(&mut r, &clock, "b", 2);
    let c = join(&mut r, &clock, "c", 3);
    for p in [&a, &b, &c] {
        connect(&mut r, &clock, p);
    }
    drain(&mut r);

    r.detach(clock.advance(Duration::from_secs(1)), &a, LinkId(1));
    let out = drain(&mut r);
    assert!(out.is_empty(), "others see nothing: {out:?}");
    assert_eq!(r.participants().len(), 3);

    // Meanwhile c leaves and b changes; a hears nothing of it.
    r.leave(clock.advance(Duration::from_secs(1)), &c);
    let out = drain(&mut r);
    assert!(signals(&out, 1).is_empty());

    let resumed = r
        .resume(
            clock.advance(Duration::from_secs(1)),
            ResumeRequest {
                claims: claims("a"),
                participant_sid: Some(a.clone()),
            },
            LinkId(4),
        )
        .expect("resume");
    assert_eq!(resumed, a, "the same session");
    let out = drain(&mut r);
    let msgs = signals(&out, 4);
    assert!(
        matches!(&msgs[0], Resp::Reconnect(rr) if rr.server_info.is_some()),
        "ReconnectResponse first: {msgs:?}"
    );
    let Resp::Update(gone) = &msgs[1] else {
        panic!("then who left: {msgs:?}")
    };
    assert_eq!(gone.participants[0].sid, c.as_str());
    assert_eq!(
        gone.participants[0].state,
        proto::participant_info::State::Disconnected as i32
    );
    let Resp::Update(all) = &msgs[2] else {
        panic!("then everyone: {msgs:?}")
    };
    let mut sids: Vec<&str> = all.participants.iter().map(|p| p.sid.as_str()).collect();
    sids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(sids, want, "everyone in the room, itself included");
    assert!(matches!(&msgs[3], Resp::RoomUpdate(_)));
    assert!(
        matches!(commands(&out)[..], [WorkerCommand::RestartIce { key }] if key.participant == a),
        "the subscriber restarts ICE"
    );
    assert!(events(&out).is_empty(), "a resume is not a join");
}

#[test]
fn a_resume_replaces_a_link_still_attached() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    connect(&mut r, &clock, &a);
    drain(&mut r);
    r.resume(
        clock.now(),
        ResumeRequest {
            claims: claims("a"),
            participant_sid: None,
        },
        LinkId(2),
    )
    .unwrap();
    let out = drain(&mut r);
    assert!(closes(&out, 1), "the old link closes");
    // The old link's requests and its late close change nothing.
    request(&mut r, &clock, &a, 1, Req::Ping(1));
    assert!(drain(&mut r).is_empty());
    r.detach(clock.now(), &a, LinkId(1));
    assert_eq!(
        r.participant(a.as_str()).unwrap().session.link,
        Some(LinkId(2))
    );
    request(&mut r, &clock, &a, 2, Req::Ping(5));
    assert!(matches!(&signals(&drain(&mut r), 2)[..], [Resp::Pong(5)]));
}

#[test]
fn resumes_of_unknown_or_replaced_sessions_are_refused() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    let unknown = r.resume(
        clock.now(),
        ResumeRequest {
            claims: claims("ghost"),
            participant_sid: None,
        },
        LinkId(2),
    );
    assert!(matches!(unknown, Err(ResumeError::UnknownIdentity(_))));
    let replaced = r.resume(
        clock.now(),
        ResumeRequest {
            claims: claims("a"),
            participant_sid: Some(ParticipantSid::new("PA_older")),
        },
        LinkId(3),
    );
    assert_eq!(replaced, Err(ResumeError::Replaced(a)));
}

#[test]
fn a_session_that_never_connected_ends_with_its_link() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    drain(&mut r);
    r.detach(clock.now(), &a, LinkId(1));
    let out = drain(&mut r);
    assert!(r.participants().is_empty());
    assert_eq!(events(&out), ["participant_connection_aborted"]);
}

#[test]
fn lost_media_asks_for_a_resume_and_ends_the_session_after_the_grace() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    let b = join(&mut r, &clock, "b", 2);
    let watcher = join(&mut r, &clock, "watcher", 3);
    for p in [&a, &b, &watcher] {
        connect(&mut r, &clock, p);
    }
    drain(&mut r);
    let lost = |r: &mut RoomCore, now, who: &ParticipantSid| {
        r.handle_media(
            now,
            MediaEvent::Disconnected {
                participant: who.clone(),
                direction: TransportDirection::Subscriber,
            },
        )
    };
    lost(&mut r, clock.now(), &a);
    let out = drain(&mut r);
    let msgs = signals(&out, 1);
    assert!(
        matches!(&msgs[..], [Resp::Leave(l)] if l.action == proto::leave_request::Action::Resume as i32 && l.can_reconnect),
        "{msgs:?}"
    );
    assert!(closes(&out, 1), "its link closes, as upstream");
    assert!(signals(&out, 3).is_empty(), "others see nothing yet");
    assert_eq!(
        r.poll_timeout(),
        Some(clock.now().at + MEDIA_LOSS_GRACE),
        "the grace is the next deadline"
    );

    // b's media comes back within the grace: it stays.
    lost(&mut r, clock.now(), &b);
    connect(&mut r, &clock, &b);
    drain(&mut r);

    r.handle_timeout(clock.advance(MEDIA_LOSS_GRACE - Duration::from_millis(1)));
    assert_eq!(r.participants().len(), 3);
    r.handle_timeout(clock.advance(Duration::from_millis(1)));
    let out = drain(&mut r);
    let left: Vec<String> = r
        .participants()
        .iter()
        .map(|p| p.info.identity.clone())
        .collect();
    assert_eq!(left, ["b", "watcher"], "a is gone, b stays");
    let seen = updates_of(&out, 3);
    assert_eq!(seen[0].sid, a.as_str());
    assert_eq!(
        seen[0].disconnect_reason,
        DisconnectReason::ConnectionTimeout as i32
    );
    assert_eq!(events(&out), ["participant_left"]);
}

#[test]
fn a_detached_session_ends_after_the_cap() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    connect(&mut r, &clock, &a);
    r.detach(clock.now(), &a, LinkId(1));
    drain(&mut r);
    r.handle_timeout(clock.advance(MAX_DETACHED - Duration::from_secs(1)));
    assert_eq!(r.participants().len(), 1);
    r.handle_timeout(clock.advance(Duration::from_secs(1)));
    assert!(r.participants().is_empty());
    assert!(
        commands(&drain(&mut r))
            .iter()
            .any(|c| matches!(c, WorkerCommand::RemovePeer { .. }))
    );
}

#[test]
fn a_participant_whose_media_never_connects_is_removed_after_the_join_timeout() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    join(&mut r, &clock, "a", 1);
    drain(&mut r);
    r.handle_timeout(clock.advance(JOIN_TIMEOUT));
    let out = drain(&mut r);
    assert!(r.participants().is_empty());
    assert!(
        matches!(&signals(&out, 1)[..], [Resp::Leave(l)] if l.reason == DisconnectReason::JoinFailure as i32)
    );
}

#[test]
fn subscription_permissions_deny_and_allow_subscribers() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let publisher = join(&mut r, &clock, "pub", 1);
    let allowed = join(&mut r, &clock, "allowed", 2);
    let other = join(&mut r, &clock, "other", 3);
    let track = publish(&mut r, &clock, &publisher, "mic");
    let out = drain(&mut r);
    let subscribed: Vec<&ParticipantSid> = commands(&out)
        .iter()
        .filter_map(|c| match c {
            WorkerCommand::Subscribe { key, .. } => Some(&key.participant),
            _ => None,
        })
        .collect();
    assert_eq!(subscribed, [&allowed, &other], "both auto-subscribe");

    request(
        &mut r,
        &clock,
        &publisher,
        1,
        Req::SubscriptionPermission(proto::SubscriptionPermission {
            all_participants: false,
            track_permissions: vec![proto::TrackPermission {
                participant_identity: "allowed".into(),
                all_tracks: true,
                ..Default::default()
            }],
        }),
    );
    let out = drain(&mut r);
    assert!(
        matches!(&commands(&out)[..], [WorkerCommand::Unsubscribe { key, track_sid }]
            if key.participant == other && *track_sid == track),
        "only the other loses it: {:?}",
        commands(&out)
    );
    assert!(
        matches!(&signals(&out, 3)[..], [Resp::SubscriptionPermissionUpdate(u)]
        if !u.allowed && u.track_sid == track.as_str() && u.participant_sid == publisher.as_str())
    );
    assert!(signals(&out, 2).is_empty());

    // An explicit subscription is refused the same way.
    request(
        &mut r,
        &clock,
        &other,
        3,
        Req::Subscription(proto::UpdateSubscription {
            track_sids: vec![track.to_string()],
            subscribe: true,
            ..Default::default()
        }),
    );
    assert!(commands(&drain(&mut r)).is_empty());

    request(
        &mut r,
        &clock,
        &publisher,
        1,
        Req::SubscriptionPermission(proto::SubscriptionPermission {
            all_participants: true,
            track_permissions: vec![],
        }),
    );
    let out = drain(&mut r);
    assert!(
        matches!(&commands(&out)[..], [WorkerCommand::Subscribe { key, .. }] if key.participant == other),
        "allowed again: it gets the track back"
    );
    assert!(matches!(&signals(&out, 3)[..], [Resp::SubscriptionPermissionUpdate(u)] if u.allowed));
}

#[test]
fn revoking_can_subscribe_stops_forwarding_and_restoring_it_resumes() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let publisher = join(&mut r, &clock, "pub", 1);
    join(&mut r, &clock, "sub", 2);
    publish(&mut r, &clock, &publisher, "mic");
    drain(&mut r);
    let set = |r: &mut RoomCore, can_subscribe: bool| {
        r.update_participant(&proto::UpdateParticipantRequest {
            room: "r".into(),
            identity: "sub".into(),
            permission: Some(proto::ParticipantPermission {
                can_subscribe,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        drain(r)
    };
    let out = set(&mut r, false);
    assert!(
        commands(&out)
            .iter()
            .any(|c| matches!(c, WorkerCommand::Unsubscribe { .. }))
    );
    let out = set(&mut r, true);
    assert!(
        commands(&out)
            .iter()
            .any(|c| matches!(c, WorkerCommand::Subscribe { .. }))
    );
}

#[test]
fn unknown_track_sids_do_not_undo_the_others() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let publisher = join(&mut r, &clock, "pub", 1);
    let sub = r
        .join(
            clock.now(),
            JoinRequest {
                claims: claims("sub"),
                client_protocol: 16,
                auto_subscribe: false,
            },
            LinkId(2),
        )
        .unwrap();
    let track = publish(&mut r, &clock, &publisher, "mic");
    drain(&mut r);
    let result = r.set_subscriptions(
        &sub,
        &[],
        &[proto::ParticipantTracks {
            participant_sid: publisher.to_string(),
            track_sids: vec!["TR_missing".into(), track.to_string()],
        }],
        true,
    );
    assert_eq!(
        result,
        Err(ServiceError::TrackNotFound("TR_missing".into()))
    );
    assert!(
        matches!(&commands(&drain(&mut r))[..], [WorkerCommand::Subscribe { track_sid, .. }] if *track_sid == track)
    );
    // Its own track: nothing.
    r.set_subscriptions(
        &publisher,
        std::slice::from_ref(&track.to_string()),
        &[],
        true,
    )
    .unwrap();
    assert!(commands(&drain(&mut r)).is_empty());
}

#[test]
fn a_kick_removes_media_and_reports_the_tracks_and_the_leave() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    join(&mut r, &clock, "b", 2);
    connect(&mut r, &clock, &a);
    publish(&mut r, &clock, &a, "mic");
    drain(&mut r);
    assert!(r.kick(clock.now(), &a, DisconnectReason::ParticipantRemoved));
    let out = drain(&mut r);
    assert!(
        matches!(&signals(&out, 1)[..], [Resp::Leave(l)] if l.reason == DisconnectReason::ParticipantRemoved as i32)
    );
    assert!(closes(&out, 1));
    assert!(
        commands(&out)
            .iter()
            .any(|c| matches!(c, WorkerCommand::RemovePeer { key } if key.participant == a))
    );
    assert_eq!(events(&out), ["track_unpublished", "participant_left"]);
    assert_eq!(r.participants()[0].info.identity, "b");
    assert!(
        r.participants()[0].subscriptions.is_empty(),
        "b no longer wants a's track"
    );
}

#[test]
fn a_session_reports_its_events_in_order() {
    let mut clock = Clock::new();
    let mut r = room_with(RoomConfig::default(), &clock);
    let a = join(&mut r, &clock, "a", 1);
    connect(&mut r, &clock, &a);
    let track = publish(&mut r, &clock, &a, "mic");
    r.handle_media(
        clock.now(),
        MediaEvent::TrackEnded {
            participant: a.clone(),
            track_sid: track.clone(),
        },
    );
    r.leave(clock.now(), &a);
    r.handle_timeout(clock.advance(Duration::from_secs(20)));
    let out = drain(&mut r);
    assert_eq!(
        events(&out),
        [
            "room_started",
            "participant_joined",
            "track_published",
            "track_unpublished",
            "participant_left",
            "room_finished"
        ]
    );
    assert!(r.is_closed());
    assert!(
        commands(&out)
            .iter()
            .any(|c| matches!(c, WorkerCommand::CloseRoom { .. }))
    );
    let unpublished = signals(&out, 1)
        .into_iter()
        .any(|m| matches!(m, Resp::TrackUnpublished(t) if t.track_sid == track.as_str()));
    assert!(unpublished, "the publisher is told its track ended");
}

#[test]
fn an_empty_room_closes_after_its_timeouts() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    assert_eq!(
        r.poll_timeout(),
        Some(clock.now().at + Duration::from_secs(300))
    );
    r.handle_timeout(clock.advance(Duration::from_secs(299)));
    assert!(!r.is_closed());
    let a = join(&mut r, &clock, "a", 1);
    r.handle_timeout(clock.advance(Duration::from_secs(100)));
    assert!(!r.is_closed(), "occupied rooms stay");
    r.leave(clock.now(), &a);
    r.handle_timeout(clock.advance(Duration::from_secs(19)));
    assert!(!r.is_closed());
    r.handle_timeout(clock.advance(Duration::from_secs(1)));
    assert!(r.is_closed(), "departure_timeout after the last left");
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn sync_state_naming_an_unknown_track_asks_for_a_full_reconnect() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    let track = publish(&mut r, &clock, &a, "mic");
    drain(&mut r);
    let state = |sid: &str| proto::SyncState {
        publish_tracks: vec![proto::TrackPublishedResponse {
            cid: "mic".into(),
            track: Some(proto::TrackInfo {
                sid: sid.into(),
                ..Default::default()
            }),
        }],
        track_sids_disabled: vec![],
        ..Default::default()
    };
    request(&mut r, &clock, &a, 1, Req::SyncState(state(track.as_str())));
    assert!(
        signals(&drain(&mut r), 1).is_empty(),
        "a known track is fine"
    );
    request(&mut r, &clock, &a, 1, Req::SyncState(state("TR_other")));
    let out = drain(&mut r);
    assert!(matches!(&signals(&out, 1)[..], [Resp::Leave(l)]
        if l.action == proto::leave_request::Action::Reconnect as i32));
    assert!(r.participants().is_empty());
}

#[test]
fn mute_is_broadcast_only_when_it_changes() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    join(&mut r, &clock, "b", 2);
    let track = publish(&mut r, &clock, &a, "mic");
    drain(&mut r);
    let mute = |r: &mut RoomCore, muted| {
        request(
            r,
            &clock,
            &a,
            1,
            Req::Mute(proto::MuteTrackRequest {
                sid: track.to_string(),
                muted,
            }),
        );
        updates_of(&drain(r), 2).len()
    };
    assert_eq!(mute(&mut r, true), 1);
    assert_eq!(mute(&mut r, true), 0, "nothing changed: nobody is told");
    assert_eq!(mute(&mut r, false), 1);
}

#[test]
fn simulated_speakers_start_and_stop() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    drain(&mut r);
    request(
        &mut r,
        &clock,
        &a,
        1,
        Req::Simulate(proto::SimulateScenario {
            scenario: Some(proto::simulate_scenario::Scenario::SpeakerUpdate(2)),
        }),
    );
    let speakers = |out: &[Output]| -> Vec<bool> {
        signals(out, 1)
            .into_iter()
            .filter_map(|m| match m {
                Resp::SpeakersChanged(s) => Some(s.speakers[0].active),
                _ => None,
            })
            .collect()
    };
    assert_eq!(speakers(&drain(&mut r)), [true]);
    r.handle_timeout(clock.advance(Duration::from_secs(2)));
    assert_eq!(speakers(&drain(&mut r)), [false]);
}

#[test]
fn own_metadata_needs_the_grant() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    let req = proto::UpdateParticipantMetadata {
        metadata: "x".into(),
        request_id: 9,
        ..Default::default()
    };
    drain(&mut r);
    request(&mut r, &clock, &a, 1, Req::UpdateMetadata(req.clone()));
    let refused = signals(&drain(&mut r), 1);
    assert!(matches!(&refused[..], [Resp::RequestResponse(rr)]
        if rr.request_id == 9 && rr.reason == proto::request_response::Reason::NotAllowed as i32));
    r.update_participant(&proto::UpdateParticipantRequest {
        room: "r".into(),
        identity: "a".into(),
        permission: Some(proto::ParticipantPermission {
            can_update_metadata: true,
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    drain(&mut r);
    request(&mut r, &clock, &a, 1, Req::UpdateMetadata(req));
    let ok = signals(&drain(&mut r), 1);
    assert!(
        ok.iter()
            .any(|m| matches!(m, Resp::RequestResponse(rr) if rr.reason == 0))
    );
    assert_eq!(r.participant(a.as_str()).unwrap().info.metadata, "x");
}

#[test]
fn a_room_full_refuses_newcomers_but_not_a_returning_identity() {
    let clock = Clock::new();
    let mut r = room_with(
        RoomConfig {
            max_participants: 1,
            ..Default::default()
        },
        &clock,
    );
    r.info.max_participants = 1;
    join(&mut r, &clock, "a", 1);
    assert_eq!(
        r.join(
            clock.now(),
            JoinRequest {
                claims: claims("b"),
                client_protocol: 16,
                auto_subscribe: true,
            },
            LinkId(2),
        ),
        Err(JoinError::RoomFull)
    );
    join(&mut r, &clock, "a", 3);
}

#[test]
fn webhook_bodies_trim_track_events_as_upstream() {
    let room = proto::Room {
        sid: "RM_x".into(),
        name: "r".into(),
        num_participants: 3,
        ..Default::default()
    };
    let participant = proto::ParticipantInfo {
        sid: "PA_x".into(),
        identity: "a".into(),
        metadata: "m".into(),
        ..Default::default()
    };
    let track = proto::TrackInfo {
        sid: "TR_x".into(),
        ..Default::default()
    };
    let hook = RoomEvent::TrackPublished {
        room: room.clone(),
        participant: participant.clone(),
        track: track.clone(),
    }
    .to_webhook();
    assert_eq!(hook.event, "track_published");
    assert_eq!(hook.room.unwrap().num_participants, 0);
    assert_eq!(hook.participant.unwrap().metadata, "");
    assert_eq!(hook.track.unwrap().sid, "TR_x");
    let hook = RoomEvent::ParticipantLeft { room, participant }.to_webhook();
    assert_eq!(
        hook.room.unwrap().num_participants,
        3,
        "full room otherwise"
    );
    assert_eq!(hook.participant.unwrap().metadata, "m");
}

#[test]
fn tracks_are_reported_after_their_publisher_joined() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    publish(&mut r, &clock, &a, "mic");
    assert!(
        events(&drain(&mut r)).is_empty(),
        "nothing before a's media connects"
    );
    connect(&mut r, &clock, &a);
    assert_eq!(
        events(&drain(&mut r)),
        ["participant_joined", "track_published"]
    );
}

#[test]
fn a_resume_tells_what_the_session_missed() {
    let clock = Clock::new();
    let mut r = room_with(
        RoomConfig {
            enable_remote_unmute: true,
            ..Default::default()
        },
        &clock,
    );
    let publisher = join(&mut r, &clock, "pub", 1);
    let sub = join(&mut r, &clock, "sub", 2);
    for p in [&publisher, &sub] {
        connect(&mut r, &clock, p);
    }
    let track = publish(&mut r, &clock, &publisher, "mic");
    // Dynacast told the publisher what is wanted; the publisher denies the subscriber.
    r.handle_media(
        clock.now(),
        MediaEvent::SubscribedLayers {
            participant: publisher.clone(),
            track_sid: track.clone(),
            max_layer: Some(1),
        },
    );
    request(
        &mut r,
        &clock,
        &publisher,
        1,
        Req::SubscriptionPermission(proto::SubscriptionPermission {
            all_participants: false,
            track_permissions: vec![],
        }),
    );
    drain(&mut r);
    // Both lose their links; the server mutes the publisher's track meanwhile.
    r.detach(clock.now(), &publisher, LinkId(1));
    r.detach(clock.now(), &sub, LinkId(2));
    r.mute_published_track(&proto::MuteRoomTrackRequest {
        room: "r".into(),
        identity: "pub".into(),
        track_sid: track.to_string(),
        muted: true,
    })
    .unwrap();
    drain(&mut r);
    let resume = |r: &mut RoomCore, who: &str, link: u64| {
        r.resume(
            clock.now(),
            ResumeRequest {
                claims: claims(who),
                participant_sid: None,
            },
            LinkId(link),
        )
        .unwrap();
        signals(&drain(r), link)
    };
    let to_pub = resume(&mut r, "pub", 3);
    assert!(
        to_pub.iter().any(
            |m| matches!(m, Resp::SubscribedQualityUpdate(u) if u.track_sid == track.as_str())
        ),
        "{to_pub:?}"
    );
    assert!(
        to_pub
            .iter()
            .any(|m| matches!(m, Resp::Mute(m) if m.muted && m.sid == track.as_str()))
    );
    let to_sub = resume(&mut r, "sub", 4);
    assert!(
        to_sub
            .iter()
            .any(|m| matches!(m, Resp::SubscriptionPermissionUpdate(u) if !u.allowed))
    );
    assert!(
        matches!(to_sub[0], Resp::Reconnect(_)),
        "still the ReconnectResponse first"
    );
}

#[test]
fn a_stale_answer_and_a_repeated_offer_are_dropped() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    drain(&mut r);
    let offer = |r: &mut RoomCore, sdp: &str| {
        r.handle_media(
            clock.now(),
            MediaEvent::SubscriberOffer {
                participant: a.clone(),
                sdp: sdp.into(),
                ice_restart: false,
            },
        );
        signals(&drain(r), 1)
            .into_iter()
            .filter_map(|m| match m {
                Resp::Offer(o) => Some(o.id),
                _ => None,
            })
            .collect::<Vec<u32>>()
    };
    assert_eq!(offer(&mut r, "v=0 one"), [1]);
    assert_eq!(
        offer(&mut r, "v=0 one"),
        Vec::<u32>::new(),
        "not twice on one link"
    );
    assert_eq!(offer(&mut r, "v=0 two"), [2]);
    let answer = |r: &mut RoomCore, id| {
        request(
            r,
            &clock,
            &a,
            1,
            Req::Answer(proto::SessionDescription {
                r#type: "answer".into(),
                sdp: "v=0".into(),
                id,
                ..Default::default()
            }),
        );
        commands(&drain(r)).len()
    };
    assert_eq!(answer(&mut r, 1), 0, "the answer to offer 1 is stale");
    assert_eq!(answer(&mut r, 2), 1);
    assert_eq!(
        answer(&mut r, 0),
        1,
        "clients that send no id are taken at their word"
    );
}

#[test]
fn resuming_again_and_again_does_not_hold_a_dead_session() {
    let mut clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    connect(&mut r, &clock, &a);
    r.handle_media(
        clock.now(),
        MediaEvent::Disconnected {
            participant: a.clone(),
            direction: TransportDirection::Subscriber,
        },
    );
    let mut link = 2;
    let mut resume = |r: &mut RoomCore, now| {
        link += 1;
        r.resume(
            now,
            ResumeRequest {
                claims: claims("a"),
                participant_sid: None,
            },
            LinkId(link),
        )
        .unwrap();
    };
    resume(&mut r, clock.advance(Duration::from_secs(4)));
    r.handle_timeout(clock.advance(Duration::from_secs(4)));
    assert_eq!(
        r.participants().len(),
        1,
        "the first resume restarted the grace"
    );
    resume(&mut r, clock.now());
    r.handle_timeout(clock.advance(Duration::from_secs(1)));
    assert!(r.participants().is_empty(), "the second did not");
}

fn refusals(out: &[Output], link: u64) -> Vec<proto::request_response::Reason> {
    signals(out, link)
        .into_iter()
        .filter_map(|m| match m {
            Resp::RequestResponse(r) => proto::request_response::Reason::try_from(r.reason).ok(),
            _ => None,
        })
        .collect()
}

fn add_track(
    r: &mut RoomCore,
    clock: &Clock,
    sid: &ParticipantSid,
    link: u64,
    req: proto::AddTrackRequest,
) {
    request(r, clock, sid, link, Req::AddTrack(req));
}

#[test]
fn announcements_are_bounded_and_must_match_their_source() {
    use proto::request_response::Reason;
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    drain(&mut r);
    for i in 0..limits::MAX_PENDING_TRACKS + 3 {
        add_track(
            &mut r,
            &clock,
            &a,
            1,
            proto::AddTrackRequest {
                cid: format!("c{i}"),
                r#type: proto::TrackType::Audio as i32,
                ..Default::default()
            },
        );
    }
    let out = drain(&mut r);
    assert_eq!(refusals(&out, 1), vec![Reason::LimitExceeded; 3]);
    let accepted = signals(&out, 1)
        .iter()
        .filter(|m| matches!(m, Resp::TrackPublished(_)))
        .count();
    assert_eq!(accepted, limits::MAX_PENDING_TRACKS);

    let b = join(&mut r, &clock, "b", 2);
    drain(&mut r);
    let big = proto::AddTrackRequest {
        cid: "big".into(),
        r#type: proto::TrackType::Video as i32,
        name: "n".repeat(limits::MAX_ADD_TRACK_BYTES),
        ..Default::default()
    };
    add_track(&mut r, &clock, &b, 2, big);
    let layers = proto::AddTrackRequest {
        cid: "layers".into(),
        r#type: proto::TrackType::Video as i32,
        layers: vec![proto::VideoLayer::default(); limits::MAX_LAYERS + 1],
        ..Default::default()
    };
    add_track(&mut r, &clock, &b, 2, layers);
    let mislabelled = proto::AddTrackRequest {
        cid: "v".into(),
        r#type: proto::TrackType::Video as i32,
        source: proto::TrackSource::Microphone as i32,
        ..Default::default()
    };
    add_track(&mut r, &clock, &b, 2, mislabelled);
    assert_eq!(
        refusals(&drain(&mut r), 2),
        [
            Reason::LimitExceeded,
            Reason::LimitExceeded,
            Reason::NotAllowed
        ]
    );
}

#[test]
fn media_binds_only_to_an_announced_track_of_its_kind() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    add_track(
        &mut r,
        &clock,
        &a,
        1,
        proto::AddTrackRequest {
            cid: "mic".into(),
            r#type: proto::TrackType::Audio as i32,
            source: proto::TrackSource::Microphone as i32,
            ..Default::default()
        },
    );
    drain(&mut r);
    // Video under the microphone's cid: not bound, and closed in the worker.
    r.handle_media(
        clock.now(),
        MediaEvent::ProducerCreated {
            participant: a.clone(),
            media: ProducedMedia {
                producer: ProducerId(9),
                cid: "mic".into(),
                kind: MediaKind::Video,
                mid: "1".into(),
                mime: "video/VP8".into(),
            },
        },
    );
    let out = drain(&mut r);
    assert!(
        matches!(&commands(&out)[..], [WorkerCommand::CloseProducer { producer, .. }] if *producer == ProducerId(9)),
        "{:?}",
        commands(&out)
    );
    assert!(r.participant(a.as_str()).unwrap().info.tracks.is_empty());
}

#[test]
fn oversized_requests_are_dropped_and_candidates_counted_per_link() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    drain(&mut r);
    let big = "x".repeat(limits::MAX_SDP + 1);
    request(
        &mut r,
        &clock,
        &a,
        1,
        Req::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: big,
            id: 1,
            ..Default::default()
        }),
    );
    assert!(
        commands(&drain(&mut r)).is_empty(),
        "an oversized SDP goes nowhere"
    );
    for _ in 0..limits::MAX_CANDIDATES + 5 {
        request(
            &mut r,
            &clock,
            &a,
            1,
            Req::Trickle(proto::TrickleRequest {
                candidate_init: r#"{"candidate":"candidate:1 1 udp 1 127.0.0.2 9 typ host"}"#
                    .into(),
                target: proto::SignalTarget::Publisher as i32,
                ..Default::default()
            }),
        );
    }
    assert_eq!(commands(&drain(&mut r)).len(), limits::MAX_CANDIDATES);
    let huge: Vec<String> = (0..=limits::MAX_LIST).map(|i| format!("TR_{i}")).collect();
    request(
        &mut r,
        &clock,
        &a,
        1,
        Req::TrackSetting(proto::UpdateTrackSettings {
            track_sids: huge,
            ..Default::default()
        }),
    );
    assert!(drain(&mut r).is_empty());
}

#[test]
fn offers_need_a_grant_to_publish_something() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let mut c = claims("viewer");
    c.video.can_publish = Some(false);
    c.video.can_publish_data = Some(false);
    let viewer = r
        .join(
            clock.now(),
            JoinRequest {
                claims: c,
                client_protocol: 16,
                auto_subscribe: true,
            },
            LinkId(1),
        )
        .unwrap();
    drain(&mut r);
    request(
        &mut r,
        &clock,
        &viewer,
        1,
        Req::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: "v=0".into(),
            ..Default::default()
        }),
    );
    assert!(commands(&drain(&mut r)).is_empty());
}

#[test]
fn attributes_are_limited_after_merging_and_names_in_own_updates() {
    use proto::request_response::Reason;
    let clock = Clock::new();
    let mut r = room(&clock);
    let mut c = claims("a");
    c.video.can_update_own_metadata = Some(true);
    let a = r
        .join(
            clock.now(),
            JoinRequest {
                claims: c,
                client_protocol: 16,
                auto_subscribe: true,
            },
            LinkId(1),
        )
        .unwrap();
    drain(&mut r);
    let mut refused = 0;
    for i in 0..10 {
        let attributes = (0..9)
            .map(|j| (format!("k{i}-{j}"), "v".repeat(1000)))
            .collect();
        request(
            &mut r,
            &clock,
            &a,
            1,
            Req::UpdateMetadata(proto::UpdateParticipantMetadata {
                attributes,
                request_id: i + 1,
                ..Default::default()
            }),
        );
        refused += refusals(&drain(&mut r), 1)
            .iter()
            .filter(|r| **r == Reason::LimitExceeded)
            .count();
    }
    assert_eq!(refused, 3, "the 8th update would pass 64000 bytes");
    let size: usize = r
        .participant(a.as_str())
        .unwrap()
        .info
        .attributes
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    assert!(size <= 64_000, "{size}");
    request(
        &mut r,
        &clock,
        &a,
        1,
        Req::UpdateMetadata(proto::UpdateParticipantMetadata {
            name: "n".repeat(300),
            request_id: 99,
            ..Default::default()
        }),
    );
    assert_eq!(refusals(&drain(&mut r), 1), [Reason::LimitExceeded]);
    // Nothing new: nobody is told.
    let same = r.participant(a.as_str()).unwrap().info.metadata.clone();
    request(
        &mut r,
        &clock,
        &a,
        1,
        Req::UpdateMetadata(proto::UpdateParticipantMetadata {
            metadata: same,
            request_id: 100,
            ..Default::default()
        }),
    );
    assert!(updates_of(&drain(&mut r), 1).is_empty());
}

#[test]
fn hidden_participants_do_not_auto_subscribe_and_subscription_limits_hold() {
    let clock = Clock::new();
    let limits_cfg = LimitConfig {
        subscription_limit_audio: 1,
        ..Default::default()
    };
    let settings = RoomSettings::new(
        RoomConfig::default(),
        limits_cfg,
        String::new(),
        "ND_t".into(),
    );
    let mut r = RoomCore::new(
        proto::Room {
            sid: "RM_t".into(),
            name: "r".into(),
            empty_timeout: 300,
            ..Default::default()
        },
        Arc::new(settings),
        0,
        clock.now(),
    );
    let a = join(&mut r, &clock, "a", 1);
    let b = join(&mut r, &clock, "b", 2);
    let mut c = claims("recorder");
    c.video.hidden = true;
    r.join(
        clock.now(),
        JoinRequest {
            claims: c,
            client_protocol: 16,
            auto_subscribe: true,
        },
        LinkId(3),
    )
    .unwrap();
    let sub = join(&mut r, &clock, "sub", 4);
    drain(&mut r);
    let first = publish(&mut r, &clock, &a, "mic-a");
    let second = publish(&mut r, &clock, &b, "mic-b");
    let out = drain(&mut r);
    let subscribed: Vec<(&ParticipantSid, &TrackSid)> = commands(&out)
        .iter()
        .filter_map(|c| match c {
            WorkerCommand::Subscribe { key, track_sid, .. } => Some((&key.participant, track_sid)),
            _ => None,
        })
        .collect();
    assert!(
        !subscribed
            .iter()
            .any(|(p, _)| r.participant(p.as_str()).unwrap().hidden()),
        "the hidden recorder subscribes to nothing by itself"
    );
    let to_sub: Vec<&TrackSid> = subscribed
        .iter()
        .filter(|(p, _)| **p == sub)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(to_sub, [&first], "one audio track at most for sub");
    // The first ends: the second gets its place.
    r.handle_media(
        clock.now(),
        MediaEvent::TrackEnded {
            participant: a.clone(),
            track_sid: first.clone(),
        },
    );
    let out = drain(&mut r);
    assert!(commands(&out).iter().any(|c| matches!(c, WorkerCommand::Subscribe { key, track_sid, .. } if key.participant == sub && *track_sid == second)));
}

#[test]
fn a_track_paused_for_bandwidth_is_told_to_its_subscriber_as_stream_state() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let publisher = join(&mut r, &clock, "pub", 1);
    let sub = join(&mut r, &clock, "sub", 2);
    for p in [&publisher, &sub] {
        connect(&mut r, &clock, p);
    }
    let track = publish(&mut r, &clock, &publisher, "mic");
    drain(&mut r);
    for (paused, state) in [
        (true, proto::StreamState::Paused),
        (false, proto::StreamState::Active),
    ] {
        r.handle_media(
            clock.now(),
            MediaEvent::StreamState {
                participant: sub.clone(),
                track_sid: track.clone(),
                paused,
            },
        );
        let out = drain(&mut r);
        let Some(Resp::StreamStateUpdate(update)) = signals(&out, 2).pop() else {
            panic!(
                "no StreamStateUpdate for the subscriber: {:?}",
                signals(&out, 2)
            );
        };
        assert_eq!(
            update.stream_states,
            [proto::StreamStateInfo {
                participant_sid: publisher.to_string(),
                track_sid: track.to_string(),
                state: state as i32,
            }]
        );
        assert!(signals(&out, 1).is_empty(), "the publisher hears nothing");
    }
}

#[test]
fn a_screen_share_is_bound_with_a_higher_priority_than_a_camera() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let publisher = join(&mut r, &clock, "pub", 1);
    connect(&mut r, &clock, &publisher);
    let mut priorities = Vec::new();
    for (i, source) in [proto::TrackSource::Camera, proto::TrackSource::ScreenShare]
        .into_iter()
        .enumerate()
    {
        let cid = format!("video{i}");
        r.handle_signal(
            clock.now(),
            &publisher,
            LinkId(1),
            proto::SignalRequest {
                message: Some(Req::AddTrack(proto::AddTrackRequest {
                    cid: cid.clone(),
                    r#type: proto::TrackType::Video as i32,
                    source: source as i32,
                    ..Default::default()
                })),
            },
        );
        r.handle_media(
            clock.now(),
            MediaEvent::ProducerCreated {
                participant: publisher.clone(),
                media: ProducedMedia {
                    producer: ProducerId(10 + i as u64),
                    cid,
                    kind: MediaKind::Video,
                    mid: i.to_string(),
                    mime: "video/VP8".into(),
                },
            },
        );
        let out = drain(&mut r);
        priorities.extend(commands(&out).into_iter().filter_map(|c| match c {
            WorkerCommand::BindTrack { priority, .. } => Some(*priority),
            _ => None,
        }));
    }
    assert_eq!(priorities, [0, 1]);
}

#[test]
fn connection_quality_reaches_each_participant_for_itself_and_whom_it_receives() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let publisher = join(&mut r, &clock, "pub", 1);
    let sub = join(&mut r, &clock, "sub", 2);
    let loner = join(&mut r, &clock, "loner", 3);
    for p in [&publisher, &sub, &loner] {
        connect(&mut r, &clock, p);
    }
    let track = publish(&mut r, &clock, &publisher, "mic");
    // The loner receives nothing.
    request(
        &mut r,
        &clock,
        &loner,
        3,
        Req::Subscription(proto::UpdateSubscription {
            track_sids: vec![track.to_string()],
            subscribe: false,
            ..Default::default()
        }),
    );
    drain(&mut r);
    let info = |sid: &ParticipantSid, q: proto::ConnectionQuality| proto::ConnectionQualityInfo {
        participant_sid: sid.to_string(),
        quality: q as i32,
        score: if q == proto::ConnectionQuality::Excellent {
            4.5
        } else {
            3.2
        },
    };
    let report = |r: &mut RoomCore, pub_q, sub_q| {
        r.handle_media(
            clock.now(),
            MediaEvent::ConnectionQuality(vec![
                info(&publisher, pub_q),
                info(&sub, sub_q),
                info(&loner, proto::ConnectionQuality::Excellent),
            ]),
        );
        drain(r)
    };
    let quality_of = |out: &[Output], link: u64| -> Vec<Vec<(String, i32)>> {
        signals(out, link)
            .into_iter()
            .filter_map(|m| match m {
                Resp::ConnectionQuality(u) => Some(
                    u.updates
                        .into_iter()
                        .map(|i| (i.participant_sid, i.quality))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    };
    use proto::ConnectionQuality::{Excellent, Good};
    let out = report(&mut r, Excellent, Excellent);
    let q = |sid: &ParticipantSid, q: proto::ConnectionQuality| (sid.to_string(), q as i32);
    assert_eq!(
        quality_of(&out, 2),
        [vec![q(&sub, Excellent), q(&publisher, Excellent)]]
    );
    assert_eq!(quality_of(&out, 1), [vec![q(&publisher, Excellent)]]);
    assert_eq!(quality_of(&out, 3), [vec![q(&loner, Excellent)]]);
    // Nothing moved: nothing is sent.
    let out = report(&mut r, Excellent, Excellent);
    assert!((1..=3).all(|l| quality_of(&out, l).is_empty()));
    // The publisher's link degrades: it and its subscriber hear; the loner does not.
    let out = report(&mut r, Good, Excellent);
    assert_eq!(
        quality_of(&out, 2),
        [vec![q(&sub, Excellent), q(&publisher, Good)]]
    );
    assert_eq!(quality_of(&out, 1), [vec![q(&publisher, Good)]]);
    assert!(quality_of(&out, 3).is_empty());
}

#[test]
fn a_publisher_offer_says_which_audio_tracks_want_red() {
    let clock = Clock::new();
    let mut r = room(&clock);
    let a = join(&mut r, &clock, "a", 1);
    let audio = |cid: &str, disable_red: bool| proto::AddTrackRequest {
        cid: cid.into(),
        r#type: proto::TrackType::Audio as i32,
        source: proto::TrackSource::Microphone as i32,
        disable_red,
        ..Default::default()
    };
    add_track(&mut r, &clock, &a, 1, audio("red-mic", false));
    add_track(&mut r, &clock, &a, 1, audio("plain-mic", true));
    add_track(
        &mut r,
        &clock,
        &a,
        1,
        proto::AddTrackRequest {
            cid: "cam".into(),
            r#type: proto::TrackType::Video as i32,
            source: proto::TrackSource::Camera as i32,
            ..Default::default()
        },
    );
    drain(&mut r);
    let offer = |r: &mut RoomCore, id: u32| {
        request(
            r,
            &clock,
            &a,
            1,
            Req::Offer(proto::SessionDescription {
                r#type: "offer".into(),
                sdp: "v=0".into(),
                id,
                ..Default::default()
            }),
        );
        let out = drain(r);
        let reds: Vec<_> = commands(&out)
            .into_iter()
            .filter_map(|c| match c {
                WorkerCommand::PublisherOffer { red, .. } => Some(red.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(reds.len(), 1, "one offer to the worker: {reds:?}");
        reds.into_iter().next().unwrap()
    };
    let red = offer(&mut r, 1);
    let pending = |cid: &str, wants: bool| (cid.to_owned(), wants);
    assert_eq!(
        red.cids,
        [pending("red-mic", true), pending("plain-mic", false)],
        "audio only, as announced"
    );
    assert!(red.mids.is_empty());

    // Once published, the track is known by its mid in later offers.
    r.handle_media(
        clock.now(),
        MediaEvent::ProducerCreated {
            participant: a.clone(),
            media: ProducedMedia {
                producer: ProducerId(1),
                cid: "red-mic".into(),
                kind: MediaKind::Audio,
                mid: "0".into(),
                mime: "audio/opus".into(),
            },
        },
    );
    drain(&mut r);
    let red = offer(&mut r, 2);
    assert_eq!(red.cids, [pending("plain-mic", false)]);
    assert_eq!(red.mids, [pending("0", true)]);
    let audio = |mid, track_id| aviary_sfu::OfferedAudio { mid, track_id };
    assert_eq!(red.wants(audio("0", None)), Some(true));
    assert_eq!(red.wants(audio("1", Some("plain-mic"))), Some(false));
    assert_eq!(red.wants(audio("2", Some("nobody"))), None);
}
