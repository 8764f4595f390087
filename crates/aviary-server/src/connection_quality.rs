//! A participant's connection quality (LiveKit's `ConnectionQuality`), scored from what the
//! media plane reports of its two transports.
//!
//! Like upstream, a score on the MOS scale (1 to 4.5) is lowered by loss, weighted by kind
//! (audio suffers from less loss than video, which NACK/RTX repairs), and by the layers the
//! bandwidth allocator holds back; then cut into EXCELLENT / GOOD / POOR. A client that has
//! gone silent (nothing at all for [`SILENT_AFTER`], or ICE lost it) is LOST. Loss comes
//! from sequence numbers (ours for what a publisher sends, its receiver reports for what a
//! subscriber gets), so Opus DTX silences are not counted as loss.

use std::time::Duration;

use aviary_sfu::LinkReport;
use livekit_protocol as proto;

/// How long without a single datagram (STUN consent included) before a client is LOST.
pub const SILENT_AFTER: Duration = Duration::from_secs(5);

/// The best score.
const MAX_SCORE: f32 = 4.5;
/// Score lost per percent of audio loss.
const AUDIO_LOSS_WEIGHT: f32 = 0.25;
/// Score lost per percent of video loss.
const VIDEO_LOSS_WEIGHT: f32 = 0.15;
/// Score lost when the allocator holds a track below the layer its subscriber asked for.
const HELD_BACK_PENALTY: f32 = 0.6;
/// Score lost when the allocator paused a track.
const PAUSED_PENALTY: f32 = 1.6;
/// Lowest score of EXCELLENT.
const EXCELLENT: f32 = 4.0;
/// Lowest score of GOOD.
const GOOD: f32 = 3.0;

/// The quality and score of a participant with these transports (either may be missing, or
/// never have heard from the client, and then does not count).
pub fn score(
    publisher: Option<&LinkReport>,
    subscriber: Option<&LinkReport>,
) -> (proto::ConnectionQuality, f32) {
    let heard: Vec<&LinkReport> = [publisher, subscriber]
        .into_iter()
        .flatten()
        .filter(|r| r.silent_for.is_some())
        .collect();
    if heard.is_empty() {
        // Not connected yet: nothing to judge.
        return (proto::ConnectionQuality::Excellent, MAX_SCORE);
    }
    if heard
        .iter()
        .any(|r| !r.connected || r.silent_for.is_some_and(|s| s >= SILENT_AFTER))
    {
        return (proto::ConnectionQuality::Lost, 0.0);
    }
    let worst = |f: fn(&LinkReport) -> Option<f32>| {
        heard.iter().filter_map(|r| f(r)).fold(0.0f32, f32::max)
    };
    // The kind that suffers more decides.
    let mut penalty = (worst(|r| r.audio_loss) * 100.0 * AUDIO_LOSS_WEIGHT)
        .max(worst(|r| r.video_loss) * 100.0 * VIDEO_LOSS_WEIGHT);
    if heard.iter().any(|r| r.paused > 0) {
        penalty += PAUSED_PENALTY;
    } else if heard.iter().any(|r| r.held_back > 0) {
        penalty += HELD_BACK_PENALTY;
    }
    let score = (MAX_SCORE - penalty).clamp(1.0, MAX_SCORE);
    let quality = if score >= EXCELLENT {
        proto::ConnectionQuality::Excellent
    } else if score >= GOOD {
        proto::ConnectionQuality::Good
    } else {
        proto::ConnectionQuality::Poor
    };
    (quality, score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ConnectionQuality::*;

    fn link() -> LinkReport {
        LinkReport {
            connected: true,
            silent_for: Some(Duration::from_millis(20)),
            ..Default::default()
        }
    }

    fn quality(
        publisher: Option<LinkReport>,
        subscriber: Option<LinkReport>,
    ) -> proto::ConnectionQuality {
        score(publisher.as_ref(), subscriber.as_ref()).0
    }

    #[test]
    fn a_clean_link_is_excellent_and_loss_lowers_it_more_for_audio() {
        assert_eq!(quality(Some(link()), Some(link())), Excellent);
        let lossy = |audio: f32, video: f32| LinkReport {
            audio_loss: Some(audio),
            video_loss: Some(video),
            ..link()
        };
        assert_eq!(quality(None, Some(lossy(0.01, 0.02))), Excellent);
        assert_eq!(
            quality(None, Some(lossy(0.0, 0.05))),
            Good,
            "5 % video loss"
        );
        assert_eq!(
            quality(None, Some(lossy(0.05, 0.0))),
            Good,
            "5 % audio loss"
        );
        assert_eq!(
            quality(None, Some(lossy(0.0, 0.12))),
            Poor,
            "12 % video loss"
        );
        assert_eq!(
            quality(None, Some(lossy(0.07, 0.0))),
            Poor,
            "7 % audio loss"
        );
        // Either side's loss counts.
        assert_eq!(quality(Some(lossy(0.0, 0.12)), Some(link())), Poor);
    }

    #[test]
    fn held_back_and_paused_tracks_lower_it() {
        let held = LinkReport {
            held_back: 1,
            ..link()
        };
        assert_eq!(quality(Some(link()), Some(held)), Good);
        let paused = LinkReport {
            paused: 1,
            ..link()
        };
        assert_eq!(quality(Some(link()), Some(paused)), Poor);
    }

    #[test]
    fn silence_or_a_lost_ice_is_lost_and_an_unused_transport_does_not_count() {
        let silent = LinkReport {
            silent_for: Some(SILENT_AFTER),
            ..link()
        };
        assert_eq!(quality(Some(link()), Some(silent)), Lost);
        let lost = LinkReport {
            connected: false,
            ..link()
        };
        assert_eq!(quality(None, Some(lost)), Lost);
        let never = LinkReport::default();
        assert_eq!(quality(Some(never), Some(link())), Excellent);
        assert_eq!(quality(Some(never), None), Excellent);
    }
}
