//! Who is speaking: a smoothed audio level per audio producer, read from the audio level
//! header extension (RFC 6464) that publishers put on every audio packet.

use std::time::{Duration, Instant};

/// Smoothed levels at or above this (dBov below full scale, so quieter is larger) count as
/// speech; a little above upstream's default, as Opus DTX keeps quiet rooms near 127.
const ACTIVE_DBOV: f32 = 40.0;
/// Weight of each packet in the running level: at 50 packets/s a steady voice is found in
/// about half a second, and a single loud packet (a click) is not.
const SMOOTHING: f32 = 0.1;
/// With DTX a silent publisher stops sending: no packet for this long is silence.
const SILENT_AFTER: Duration = Duration::from_millis(500);
/// dBov of digital silence.
const SILENCE_DBOV: f32 = 127.0;

/// The running audio level of one producer.
#[derive(Debug, Clone)]
pub(crate) struct Loudness {
    smoothed_dbov: f32,
    last: Option<Instant>,
}

impl Default for Loudness {
    fn default() -> Self {
        Self {
            smoothed_dbov: SILENCE_DBOV,
            last: None,
        }
    }
}

impl Loudness {
    /// One packet's level: the extension's value, 0 (loudest) down to -127 dBov.
    pub(crate) fn observe(&mut self, level: i8, now: Instant) {
        let dbov = (-f32::from(level)).clamp(0.0, SILENCE_DBOV);
        self.smoothed_dbov += SMOOTHING * (dbov - self.smoothed_dbov);
        self.last = Some(now);
    }

    /// The level (0..=1, 1 loudest, as LiveKit's `SpeakerInfo.level`) while speaking.
    pub(crate) fn speaking(&self, now: Instant) -> Option<f32> {
        let recent = self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < SILENT_AFTER);
        (recent && self.smoothed_dbov <= ACTIVE_DBOV)
            .then(|| 10f32.powf(-self.smoothed_dbov / 20.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_voice_speaks_and_a_click_or_silence_does_not() {
        let t0 = Instant::now();
        let mut l = Loudness::default();
        l.observe(-3, t0);
        assert_eq!(l.speaking(t0), None, "one loud packet is a click");
        let mut now = t0;
        for _ in 0..40 {
            now += Duration::from_millis(20);
            l.observe(-25, now);
        }
        let level = l.speaking(now).expect("speaking");
        assert!(level > 0.03 && level < 0.1, "{level}");
        // DTX: the packets stop, and so does the speech.
        assert_eq!(l.speaking(now + SILENT_AFTER), None);
        // Quiet packets bring the level down.
        for _ in 0..40 {
            now += Duration::from_millis(20);
            l.observe(-90, now);
        }
        assert_eq!(l.speaking(now), None);
    }
}
