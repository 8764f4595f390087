//! A consumer's sequence numbers and timestamps stay continuous across a pause and a resume
//! (a source switch for the receiver), and no packet flows while paused.

mod common;

use std::time::Duration;

use common::{Sim, payload_seq};
use str0m::media::MediaKind;

#[test]
fn numbering_continues_across_pause_and_resume() {
    let mut sim = Sim::new(7);
    let (alice, mids) = sim.join_publisher("alice", &[MediaKind::Video]);
    let bob = sim.join_subscriber("bob");
    sim.send_rtp(alice, mids[0], 1, 0, &1u64.to_be_bytes());
    sim.run_for(Duration::from_millis(50));
    let (producer, _) = sim.producers()[0];
    let consumer = sim.consume(producer, bob);
    sim.stream(alice, mids[0], 2, 30, Duration::from_millis(33), 3000);
    let before = sim.clients[bob].rtp().len();

    sim.router.pause_consumer(consumer, true).unwrap();
    sim.stream(alice, mids[0], 32, 60, Duration::from_millis(33), 3000);
    assert_eq!(sim.clients[bob].rtp().len(), before, "nothing while paused");

    sim.router.pause_consumer(consumer, false).unwrap();
    sim.stream(alice, mids[0], 92, 30, Duration::from_millis(33), 3000);
    let rtp = sim.clients[bob].rtp();
    let seqs: Vec<u64> = rtp.iter().map(|p| *p.seq_no).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap at the switch: {seqs:?}"
    );
    // The first packet after the resume is publisher packet 92, not something earlier.
    assert_eq!(payload_seq(rtp[before]), 92);
    // Time moved forward across the pause, by about the wall time that passed (2 s).
    let ts_before = rtp[before - 1].header.timestamp;
    let ts_after = rtp[before].header.timestamp;
    let delta = ts_after.wrapping_sub(ts_before);
    assert!(
        (150_000..=220_000).contains(&delta),
        "timestamp advanced by {delta} ticks"
    );
}
