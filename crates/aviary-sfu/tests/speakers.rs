//! Active speakers: the router's running level per audio producer, from the audio level
//! header extension on the publisher's packets.

mod common;

use std::time::Duration;

use common::Sim;
use str0m::media::MediaKind;

#[test]
fn a_loud_publisher_speaks_and_a_quiet_one_does_not() {
    let mut sim = Sim::new(21);
    let (loud, loud_mids) = sim.join_publisher("loud", &[MediaKind::Audio]);
    let (quiet, quiet_mids) = sim.join_publisher("quiet", &[MediaKind::Audio]);
    for seq in 1..=60u64 {
        let ts = (seq as u32) * 960;
        sim.send_rtp_level(loud, loud_mids[0], seq, ts, -20);
        sim.send_rtp_level(quiet, quiet_mids[0], seq, ts, -100);
        sim.run_for(Duration::from_millis(20));
    }
    let producers = sim.producers();
    let loud_producer = producers
        .iter()
        .find(|(p, _)| sim.router.producer(*p).unwrap().transport() == sim.clients[loud].transport)
        .map(|(p, _)| *p)
        .unwrap();
    let speakers = sim.router.speakers(sim.now);
    assert_eq!(speakers.len(), 1, "{speakers:?}");
    assert_eq!(speakers[0].0, loud_producer);
    assert!(speakers[0].1 > 0.05 && speakers[0].1 < 0.2, "{speakers:?}");
    // The loud one goes silent (DTX: no more packets).
    sim.run_for(Duration::from_secs(1));
    assert!(sim.router.speakers(sim.now).is_empty());
}
