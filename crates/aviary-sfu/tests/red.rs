//! Opus with RED (RFC 2198): a RED publisher's packets reach a subscriber that negotiated
//! RED as they came, and one without RED as their primary Opus encoding, unwrapped.

mod common;

use std::time::Duration;

use common::Sim;
use str0m::format::Codec;
use str0m::media::MediaKind;

/// An RFC 2198 payload: one redundant block (the previous frame) and the primary block,
/// both of Opus payload type `opus`.
fn red_payload(opus: u8, redundant: &[u8], primary: &[u8]) -> Vec<u8> {
    let len = redundant.len() as u16;
    let mut p = vec![
        0x80 | opus,             // F=1: another block follows
        0x03,                    // timestamp offset 960 (14 bits) ...
        0xc0 | (len >> 8) as u8, // ... and the 10-bit block length
        len as u8,
        opus, // F=0: the primary block's header
    ];
    p.extend_from_slice(redundant);
    p.extend_from_slice(primary);
    p
}

fn pts(sim: &Sim, client: usize) -> (u8, Option<u8>) {
    let cfg = sim.clients[client].rtc.codec_config();
    let opus = cfg.find(|p| p.spec().codec == Codec::Opus).unwrap();
    (*opus.pt(), opus.red().map(|pt| *pt))
}

#[test]
fn red_goes_as_is_to_red_subscribers_and_unwrapped_to_the_others() {
    let mut sim = Sim::new(7);
    sim.clients_use_red = true;
    let (publisher, mids) = sim.join_publisher("pub", &[MediaKind::Audio]);
    let with_red = sim.join_subscriber("with-red");
    sim.clients_use_red = false;
    let plain = sim.join_subscriber("plain");
    let (producer, _) = sim.producers()[0];
    sim.consume(producer, with_red);
    sim.consume(producer, plain);

    let (pub_opus, pub_red) = pts(&sim, publisher);
    let pub_red = pub_red.expect("the publisher negotiated RED");
    let (red_sub_opus, red_sub_red) = pts(&sim, with_red);
    let red_sub_red = red_sub_red.expect("the RED subscriber negotiated RED");
    let (plain_opus, plain_red) = pts(&sim, plain);
    assert_eq!(plain_red, None, "the plain subscriber has no RED");

    let frames: Vec<Vec<u8>> = (0..20u8).map(|i| vec![0xfc, i, i ^ 0x5a]).collect();
    for (i, frame) in frames.iter().enumerate().skip(1) {
        let payload = red_payload(pub_opus, &frames[i - 1], frame);
        sim.send_audio_pt(publisher, mids[0], pub_red, i as u64, &payload);
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_millis(200));

    let sent: Vec<Vec<u8>> = (1..frames.len())
        .map(|i| red_payload(pub_opus, &frames[i - 1], &frames[i]))
        .collect();
    let got_red = sim.clients[with_red].rtp();
    assert!(
        got_red
            .iter()
            .all(|p| *p.header.payload_type == red_sub_red),
        "the RED subscriber gets its RED payload type {red_sub_red} (its Opus is {red_sub_opus})"
    );
    let got_red: Vec<Vec<u8>> = got_red.iter().map(|p| p.payload.to_vec()).collect();
    assert_eq!(got_red, sent, "RED packets go as they came");

    let got_plain = sim.clients[plain].rtp();
    assert!(
        got_plain
            .iter()
            .all(|p| *p.header.payload_type == plain_opus),
        "the plain subscriber gets Opus ({plain_opus})"
    );
    let got_plain: Vec<Vec<u8>> = got_plain.iter().map(|p| p.payload.to_vec()).collect();
    assert_eq!(got_plain, frames[1..], "only each packet's primary frame");

    let stats = sim.router.stats();
    let n = sent.len() as u64;
    assert_eq!(
        (stats.red_received, stats.red_forwarded, stats.red_unwrapped),
        (n, n, n)
    );
}

#[test]
fn red_sent_before_a_plain_subscriber_answered_does_not_fix_its_payload_type() {
    let mut sim = Sim::new(8);
    sim.clients_use_red = true;
    let (publisher, mids) = sim.join_publisher("pub", &[MediaKind::Audio]);
    sim.clients_use_red = false;
    let plain = sim.join_subscriber("plain");
    let (producer, _) = sim.producers()[0];
    let (pub_opus, pub_red) = pts(&sim, publisher);
    let pub_red = pub_red.expect("the publisher negotiated RED");
    let frame = |i: u64| vec![0xfc, i as u8, 0x11];
    let mut seq = 1u64;
    let mut send = |sim: &mut Sim, n: u64| {
        for _ in 0..n {
            let payload = red_payload(pub_opus, &frame(seq - 1), &frame(seq));
            sim.send_audio_pt(publisher, mids[0], pub_red, seq, &payload);
            sim.run_for(Duration::from_millis(20));
            seq += 1;
        }
    };
    // The consumer exists and media flows while the subscriber has not answered yet: our
    // offer still lists RED.
    sim.hold_offers = true;
    sim.consume(producer, plain);
    send(&mut sim, 10);
    sim.hold_offers = false;
    sim.answer_pending_offers();
    sim.run_for(Duration::from_millis(50));
    let before = sim.clients[plain].rtp().len();
    send(&mut sim, 20);
    sim.run_for(Duration::from_millis(200));

    let (plain_opus, _) = pts(&sim, plain);
    let after: Vec<_> = sim.clients[plain].rtp().into_iter().skip(before).collect();
    assert!(
        after.len() >= 18,
        "{} packets after the answer",
        after.len()
    );
    for p in after {
        assert_eq!(*p.header.payload_type, plain_opus);
        assert_eq!(
            p.payload.len(),
            3,
            "only the primary frame: {:?}",
            p.payload
        );
    }
}
