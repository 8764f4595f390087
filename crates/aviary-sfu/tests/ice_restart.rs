//! ICE restarts: a resumed session's subscriber gets a new offer with fresh credentials, a
//! publisher may restart by its own offer, and a client that ICE lost is not dropped: it
//! can come back by restarting.

mod common;

use std::time::Duration;

use aviary_sfu::Event;
use common::{Sim, payload_seq};
use str0m::change::SdpOffer;
use str0m::media::MediaKind;

fn offer_ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("an ice-ufrag")
        .trim()
        .to_string()
}

/// Payload sequence numbers `client` received, in order.
fn received(sim: &Sim, client: usize) -> Vec<u64> {
    sim.clients[client]
        .rtp()
        .into_iter()
        .map(payload_seq)
        .collect()
}

#[test]
fn a_subscriber_restart_changes_credentials_and_media_keeps_flowing() {
    let mut sim = Sim::new(3);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    sim.consume(producer, bob);
    sim.stream(alice, mids[0], 2, 30, Duration::from_millis(33), 3000);
    assert!(received(&sim, bob).contains(&31));

    let transport = sim.clients[bob].transport;
    let old = sim
        .router
        .transport(transport)
        .unwrap()
        .ice_ufrag()
        .to_string();
    sim.hold_offers = true;
    let new = sim.router.restart_ice(transport).expect("restart");
    sim.drain_router();
    assert_ne!(new, old, "fresh credentials");
    let offer = sim
        .router_events
        .iter()
        .find_map(|e| match e {
            Event::OfferReady {
                sdp,
                ice_restart: true,
                ..
            } => Some(sdp.clone()),
            _ => None,
        })
        .expect("a restart offer");
    assert_eq!(offer_ufrag(&offer), new, "the offer carries them");
    sim.hold_offers = false;
    sim.answer_pending_offers();

    sim.stream(alice, mids[0], 32, 60, Duration::from_millis(33), 3000);
    let got = received(&sim, bob);
    let after: Vec<u64> = got.iter().copied().filter(|s| *s >= 32).collect();
    assert!(
        after.len() >= 55 && after.contains(&91),
        "media flows after the restart: {after:?}"
    );
}

#[test]
fn an_unanswered_offer_is_sent_again_and_the_restart_follows_its_answer() {
    let mut sim = Sim::new(4);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video, MediaKind::Audio]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.send_rtp(alice, mids[1], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let producers = sim.producers();
    let video = producers
        .iter()
        .find(|p| p.1 == MediaKind::Video)
        .unwrap()
        .0;
    let audio = producers
        .iter()
        .find(|p| p.1 == MediaKind::Audio)
        .unwrap()
        .0;
    sim.consume(video, bob);

    // The audio m-line's offer never reaches bob (his signaling broke).
    sim.hold_offers = true;
    let transport = sim.clients[bob].transport;
    let options = aviary_sfu::ConsumerOptions::new(audio, transport, "s".into(), "a".into());
    let consumer = sim.router.consume(options).expect("consume");
    sim.drain_router();
    let first = offers(&mut sim);
    assert_eq!(first.len(), 1);
    let old = sim
        .router
        .transport(transport)
        .unwrap()
        .ice_ufrag()
        .to_string();

    sim.router.restart_ice(transport).expect("restart");
    sim.drain_router();
    let again = offers(&mut sim);
    assert_eq!(
        again,
        [(first[0].0.clone(), false)],
        "the offer in flight is sent again as it was, mids included"
    );
    // Bob answers it: the audio m-line is his, and the restart offer follows at once.
    answer(&mut sim, bob, &again[0].0);
    let restart = offers(&mut sim);
    assert!(
        matches!(&restart[..], [(sdp, true)] if offer_ufrag(sdp) != old),
        "then the restart, with new credentials: {restart:?}"
    );
    assert_eq!(
        sim.router.transport(transport).unwrap().ice_ufrag(),
        offer_ufrag(&restart[0].0)
    );
    answer(&mut sim, bob, &restart[0].0);
    sim.hold_offers = false;
    sim.run_for(Duration::from_millis(100));
    assert!(sim.router.consumer(consumer).unwrap().mid().is_some());

    let before = sim.clients[bob].rtp().len();
    sim.stream(alice, mids[1], 2, 20, Duration::from_millis(20), 960);
    let audio_in = sim.clients[bob].rtp()[before..]
        .iter()
        .filter(|p| payload_seq(p) >= 2)
        .count();
    assert!(audio_in >= 18, "audio reaches bob: {audio_in} packets");
}

/// Takes the offers the router made: (sdp, ice restart).
fn offers(sim: &mut Sim) -> Vec<(String, bool)> {
    let out = sim
        .router_events
        .iter()
        .filter_map(|e| match e {
            Event::OfferReady {
                sdp, ice_restart, ..
            } => Some((sdp.clone(), *ice_restart)),
            _ => None,
        })
        .collect();
    sim.router_events
        .retain(|e| !matches!(e, Event::OfferReady { .. }));
    out
}

/// Client `idx` answers `offer`, and the router takes the answer.
fn answer(sim: &mut Sim, idx: usize, offer: &str) {
    let offer = SdpOffer::from_sdp_string(offer).unwrap();
    let answer = sim.clients[idx].rtc.sdp_api().accept_offer(offer).unwrap();
    let transport = sim.clients[idx].transport;
    sim.router
        .accept_answer(transport, &answer.to_sdp_string())
        .expect("answer taken");
    sim.drain_router();
}

#[test]
fn a_publisher_restarting_ice_is_answered_with_new_credentials() {
    let mut sim = Sim::new(5);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    sim.consume(producer, bob);
    let transport = sim.clients[alice].transport;
    let old = sim
        .router
        .transport(transport)
        .unwrap()
        .ice_ufrag()
        .to_string();

    let mut api = sim.clients[alice].rtc.sdp_api();
    api.ice_restart(true);
    let (offer, pending) = api.apply().expect("a restart offer");
    let answer = sim
        .router
        .accept_offer(transport, &offer.to_sdp_string())
        .expect("answered");
    let new = sim
        .router
        .transport(transport)
        .unwrap()
        .ice_ufrag()
        .to_string();
    assert_ne!(new, old, "the router follows with credentials of its own");
    assert_eq!(offer_ufrag(&answer), new);
    sim.clients[alice]
        .rtc
        .sdp_api()
        .accept_answer(
            pending,
            str0m::change::SdpAnswer::from_sdp_string(&answer).unwrap(),
        )
        .unwrap();
    sim.drain_router();

    sim.stream(alice, mids[0], 2, 60, Duration::from_millis(33), 3000);
    let after: Vec<u64> = received(&sim, bob)
        .into_iter()
        .filter(|s| *s >= 2)
        .collect();
    assert!(
        after.len() >= 55 && after.contains(&61),
        "the publisher's media still arrives: {after:?}"
    );
}

#[test]
fn a_client_ice_lost_is_kept_and_comes_back_by_restarting() {
    let mut sim = Sim::new(6);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    sim.consume(producer, bob);
    let transport = sim.clients[bob].transport;
    let disconnected = |sim: &Sim| {
        sim.router_events
            .iter()
            .any(|e| matches!(e, Event::TransportDisconnected { transport: t } if *t == transport))
    };

    // Bob's network goes away: nothing of his reaches the router.
    sim.clients[bob].loss_out = 1.0;
    sim.run_until(Duration::from_secs(30), disconnected);
    assert!(disconnected(&sim), "ICE-lite notices the silence");
    assert!(
        sim.router.transport(transport).is_some(),
        "the transport is kept for the client to come back"
    );
    assert!(
        !sim.router_events
            .iter()
            .any(|e| matches!(e, Event::TransportClosed { .. })),
        "nothing closed"
    );

    // His network is back and his session resumed: the router restarts ICE.
    sim.clients[bob].loss_out = 0.0;
    sim.router_events.clear();
    sim.router.restart_ice(transport).expect("restart");
    sim.drain_router();
    sim.answer_pending_offers();
    sim.run_until(Duration::from_secs(10), |s| {
        s.router_events
            .iter()
            .any(|e| matches!(e, Event::TransportConnected { transport: t } if *t == transport))
    });
    assert!(
        sim.router_events
            .iter()
            .any(|e| matches!(e, Event::TransportConnected { transport: t } if *t == transport)),
        "connected again"
    );
    let before = sim.clients[bob].rtp().len();
    sim.stream(alice, mids[0], 100, 30, Duration::from_millis(33), 3000);
    assert!(
        sim.clients[bob].rtp().len() >= before + 25,
        "media flows again"
    );
}
