//! A bitrate meter with O(1) work per packet: bytes are summed over a fixed window, and the
//! rate of the last complete window is what it reports.

use std::time::{Duration, Instant};

/// Length of one measuring window.
const WINDOW: Duration = Duration::from_millis(500);
/// Complete windows remembered for [`RateMeter::peak_bps`].
const KEPT: usize = 6;

/// Bits per second seen over the last complete window.
#[derive(Clone, Debug, Default)]
pub(crate) struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    /// The last complete window's rate and when it ended.
    last: Option<(u64, Instant)>,
    /// The last [`KEPT`] windows' rates, oldest first.
    recent: std::collections::VecDeque<u64>,
}

impl RateMeter {
    /// Counts `bytes` received at `now`.
    pub(crate) fn add(&mut self, bytes: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            let bps = self.bytes * 8 * 1_000_000 / elapsed.as_micros().max(1) as u64;
            self.last = Some((bps, now));
            if self.recent.len() == KEPT {
                self.recent.pop_front();
            }
            self.recent.push_back(bps);
            self.window_start = Some(now);
            self.bytes = 0;
        }
        self.bytes += bytes as u64;
    }

    /// The rate of the last complete window, in bits per second; 0 once nothing has come for
    /// two windows.
    pub(crate) fn bps(&self, now: Instant) -> u64 {
        match self.last {
            Some((bps, at)) if now.saturating_duration_since(at) < 2 * WINDOW => bps,
            _ => 0,
        }
    }
}

impl RateMeter {
    /// The mean rate of the last few windows (3 s), or 0 once the stream went silent: what
    /// the stream needs, neither what one quiet window happened to carry nor one keyframe's
    /// burst (an encoder's rate swings with both).
    pub(crate) fn mean_bps(&self, now: Instant) -> u64 {
        if self.bps(now) == 0 || self.recent.is_empty() {
            return 0;
        }
        self.recent.iter().sum::<u64>() / self.recent.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_rate_of_the_last_window_and_forgets_a_silent_stream() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        assert_eq!(m.bps(t0), 0);
        // 1250 bytes every 10 ms: 1 Mbit/s.
        for i in 0..=100 {
            m.add(1250, t0 + Duration::from_millis(10 * i));
        }
        let now = t0 + Duration::from_millis(1000);
        let bps = m.bps(now);
        assert!((950_000..=1_050_000).contains(&bps), "{bps}");
        assert_eq!(m.bps(now + Duration::from_secs(2)), 0);
    }

    #[test]
    fn the_mean_evens_out_a_quiet_window() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        // 1 Mbit/s for a second, then 100 kbit/s for a second.
        for i in 0..100 {
            m.add(1250, t0 + Duration::from_millis(10 * i));
        }
        for i in 100..=200 {
            m.add(125, t0 + Duration::from_millis(10 * i));
        }
        let now = t0 + Duration::from_millis(2000);
        assert!(m.bps(now) < 150_000, "{}", m.bps(now));
        // Four windows: two at 1 Mbit/s, two at 100 kbit/s.
        let mean = m.mean_bps(now);
        assert!((500_000..=600_000).contains(&mean), "{mean}");
        assert_eq!(m.mean_bps(now + Duration::from_secs(2)), 0, "silent: gone");
    }
}
