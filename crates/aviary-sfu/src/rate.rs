//! A bitrate meter with O(1) work per packet: bytes are summed over a fixed window, and the
//! rate of the last complete window is what it reports.

use std::time::{Duration, Instant};

/// Length of one measuring window.
const WINDOW: Duration = Duration::from_millis(500);

/// Bits per second seen over the last complete window.
#[derive(Clone, Debug, Default)]
pub(crate) struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    /// The last complete window's rate and when it ended.
    last: Option<(u64, Instant)>,
}

impl RateMeter {
    /// Counts `bytes` received at `now`.
    pub(crate) fn add(&mut self, bytes: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            let bps = self.bytes * 8 * 1_000_000 / elapsed.as_micros().max(1) as u64;
            self.last = Some((bps, now));
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
}
