//! Sequence number and timestamp rewriting for one consumer.
//!
//! Each consumer sends on its own SSRC, so its sequence numbers and RTP timestamps must be
//! continuous whatever happens upstream (pause, resume, a new source). Within one run of a
//! source the output is `input + offset`, so a gap in the input stays a gap in the output and
//! the receiver NACKs it. At a resync (first packet, resume, source switch) the offsets are
//! re-based so the output carries on from where it stopped.

use std::time::Instant;

/// Rewrites (extended sequence number, RTP timestamp) pairs.
#[derive(Debug, Clone)]
pub(crate) struct Rewriter {
    clock_rate: u32,
    /// Added to the input's extended sequence number (wrapping in u64).
    seq_offset: u64,
    /// Added to the input timestamp (wrapping in u32).
    ts_offset: u32,
    /// First input sequence number since the last resync; older input is dropped.
    base_in_seq: u64,
    last_out_seq: Option<u64>,
    last_out_ts: u32,
    last_out_at: Option<Instant>,
    synced: bool,
}

impl Rewriter {
    pub(crate) fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            seq_offset: 0,
            ts_offset: 0,
            base_in_seq: 0,
            last_out_seq: None,
            last_out_ts: 0,
            last_out_at: None,
            synced: false,
        }
    }

    /// The next packet starts a new run (resume, source switch).
    pub(crate) fn resync(&mut self) {
        self.synced = false;
    }

    /// The output (sequence number, timestamp) for an input packet, or `None` to drop it
    /// (it predates the current run).
    pub(crate) fn rewrite(&mut self, in_seq: u64, in_ts: u32, now: Instant) -> Option<(u64, u32)> {
        if !self.synced {
            self.synced = true;
            self.base_in_seq = in_seq;
            let out_seq = self.last_out_seq.map_or(in_seq, |s| s + 1);
            self.seq_offset = out_seq.wrapping_sub(in_seq);
            let out_ts = match self.last_out_at {
                // Advance by the wall time since the last packet sent, at least one tick, so
                // the receiver's jitter buffer sees time move forward.
                Some(at) => {
                    let elapsed = now.saturating_duration_since(at);
                    let ticks =
                        (elapsed.as_micros() as u64 * self.clock_rate as u64 / 1_000_000).max(1);
                    self.last_out_ts.wrapping_add(ticks as u32)
                }
                None => in_ts,
            };
            self.ts_offset = out_ts.wrapping_sub(in_ts);
        } else if in_seq < self.base_in_seq {
            return None;
        }
        let out_seq = in_seq.wrapping_add(self.seq_offset);
        let out_ts = in_ts.wrapping_add(self.ts_offset);
        if self.last_out_seq.is_none_or(|s| out_seq > s) {
            self.last_out_seq = Some(out_seq);
            self.last_out_ts = out_ts;
            self.last_out_at = Some(now);
        }
        Some((out_seq, out_ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn passes_through_with_gaps_kept() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        assert_eq!(r.rewrite(100, 1000, t0), Some((100, 1000)));
        assert_eq!(r.rewrite(101, 4000, t0), Some((101, 4000)));
        // 102 lost upstream: the gap stays, so the receiver can NACK it.
        assert_eq!(r.rewrite(103, 7000, t0), Some((103, 7000)));
        // A late retransmission of 102 still maps into the gap.
        assert_eq!(r.rewrite(102, 4000, t0), Some((102, 4000)));
    }

    #[test]
    fn resync_continues_sequence_and_time() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        r.rewrite(500, 10_000, t0);
        r.rewrite(501, 13_000, t0);
        r.resync();
        // A new source with unrelated numbers, 100 ms later.
        let t1 = t0 + Duration::from_millis(100);
        let (seq, ts) = r.rewrite(9_000, 777, t1).unwrap();
        assert_eq!(seq, 502, "sequence continues");
        assert_eq!(ts, 13_000 + 9_000, "timestamp advances by 100 ms at 90 kHz");
        assert_eq!(r.rewrite(9_001, 777 + 3000, t1), Some((503, 22_000 + 3000)));
        // Packets from before the switch are dropped.
        assert_eq!(r.rewrite(8_999, 0, t1), None);
    }

    #[test]
    fn timestamps_wrap() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000);
        r.rewrite(1, u32::MAX - 10, t0);
        assert_eq!(r.rewrite(2, 5, t0), Some((2, 5)));
    }
}
