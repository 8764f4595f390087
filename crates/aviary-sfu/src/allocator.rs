//! Shares one subscriber's estimated bandwidth among the tracks it receives.
//!
//! Pure: the router gathers each consumer's state and the transport's estimate, and applies
//! what comes back. As LiveKit's stream allocator and mediasoup's
//! `DistributeAvailableOutgoingBitrate` do, audio is served first, then video by priority
//! (screen share before camera): every video track gets its lowest layer before any gets
//! more, then each in turn climbs as far as its preference and what is left allow.
//! Going down waits until the estimate has stayed below what is being sent for
//! [`DOWNGRADE_AFTER`]; going up happens once the estimate has grown enough, which it only
//! does when str0m's probing (driven by [`Plan::desired`]) found the room.

use std::time::{Duration, Instant};

use str0m::media::MediaKind;

use crate::ConsumerId;
use crate::selector::Allowed;

/// How long the estimate must stay below the current usage before tracks step down.
pub const DOWNGRADE_AFTER: Duration = Duration::from_secs(1);

/// While the subscriber gets less than it asked for, how often BWE is asked to probe again.
/// str0m probes when the desired rate rises, so the desired rate is lowered to the
/// estimate for one round and raised again.
pub const REPROBE_EVERY: Duration = Duration::from_secs(3);

/// A paused track is first tried again this long after it paused; each failed try doubles
/// the wait, up to [`MAX_TRIAL_WAIT`]. Nothing sent means no feedback, so str0m's estimate
/// cannot recover on its own: only media on the link shows whether it has room again.
pub const FIRST_TRIAL_WAIT: Duration = Duration::from_secs(4);
/// The longest wait between tries of a paused track.
pub const MAX_TRIAL_WAIT: Duration = Duration::from_secs(32);
/// How long a try runs before the estimate judges it.
pub const TRIAL: Duration = Duration::from_secs(2);

/// Share of the estimate that allocation plans to fill: the rest absorbs keyframes and
/// the measuring noise of a 500 ms window.
const HEADROOM: f64 = 0.9;

/// What the allocator knows of one consumer.
#[derive(Clone, Debug)]
pub struct TrackDemand {
    /// Which consumer.
    pub consumer: ConsumerId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Higher is served first among video tracks (screen share above camera).
    pub priority: u8,
    /// Paused by the subscriber itself: it takes nothing.
    pub disabled: bool,
    /// The highest layer the subscriber asked for (0 is the lowest).
    pub preferred: usize,
    /// The producer's measured bitrate per layer, lowest first, in bits per second; 0 for
    /// a layer not being received.
    pub layer_bps: Vec<u64>,
    /// What the consumer is allowed now.
    pub allowed: Allowed,
}

impl TrackDemand {
    /// The layer that `allowed` comes to, given which layers are sent.
    fn layer_of(&self, allowed: Allowed) -> Option<usize> {
        let cap = match allowed {
            Allowed::Nothing => return None,
            Allowed::Any => self.preferred,
            Allowed::UpTo(l) => l.min(self.preferred),
        };
        let top = cap.min(self.layer_bps.len().saturating_sub(1));
        (0..=top)
            .rev()
            .find(|&l| self.layer_bps[l] > 0)
            .or_else(|| self.lowest())
    }

    fn lowest(&self) -> Option<usize> {
        self.layer_bps.iter().position(|&b| b > 0)
    }

    /// Bits per second this consumer sends when allowed `allowed`.
    fn cost(&self, allowed: Allowed) -> u64 {
        if self.disabled {
            return 0;
        }
        self.layer_of(allowed)
            .and_then(|l| self.layer_bps.get(l))
            .copied()
            .unwrap_or(0)
    }
}

/// The allocator's decision for one subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Consumers whose allowance changes, and to what.
    pub changes: Vec<(ConsumerId, Allowed)>,
    /// What the subscriber would receive with every preference met: the rate BWE probes for.
    pub desired: u64,
    /// What the next step up would need: padding may keep the link this busy.
    pub next_step: u64,
    /// New (minimum, desired) rates for str0m's BWE, when they change.
    pub bwe: Option<(u64, u64)>,
}

/// Per-subscriber allocation state.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    /// Since when the estimate has been below what is sent.
    below_since: Option<Instant>,
    /// The rates last given to BWE.
    rates: Option<(u64, u64)>,
    /// When to ask for the next probe, while short of what is desired.
    reprobe_at: Option<Instant>,
    /// The desired rate is lowered for this round, to be raised at the next.
    lowered: bool,
    /// Since when some video track has been paused.
    paused_since: Option<Instant>,
    /// How long the next try of a paused track waits.
    trial_wait: Option<Duration>,
    /// A paused track is being tried until then.
    trial_until: Option<Instant>,
}

impl Allocator {
    /// Decides, at `now`, what each of `tracks` may send within `estimate` bits per second.
    /// With `allow_pause`, a video track that does not fit even at its lowest layer is
    /// paused; without, it keeps its lowest layer.
    pub fn allocate(
        &mut self,
        now: Instant,
        estimate: u64,
        tracks: &[TrackDemand],
        allow_pause: bool,
    ) -> Plan {
        let usage: u64 = tracks.iter().map(|t| t.cost(t.allowed)).sum();
        let budget = (estimate as f64 * HEADROOM) as u64;
        let ideal = ideal(budget, tracks, allow_pause);
        let desired = tracks.iter().map(|t| t.cost(Allowed::Any)).sum();
        let next_step = next_step(tracks, &ideal).unwrap_or(desired);

        let lower = tracks
            .iter()
            .zip(&ideal)
            .any(|(t, a)| rank(t, *a) < rank(t, t.allowed));
        let trial = self.trial_until.is_some_and(|t| now < t);
        let apply = if trial {
            self.below_since = None;
            false
        } else if estimate < usage {
            let since = *self.below_since.get_or_insert(now);
            now.saturating_duration_since(since) >= DOWNGRADE_AFTER
        } else {
            self.below_since = None;
            // Within the estimate: only pure upgrades (the estimate grew), never a reshuffle.
            !lower
        };
        let mut changes = Vec::new();
        if apply {
            self.below_since = None;
            for (t, a) in tracks.iter().zip(&ideal) {
                if t.layer_of(*a) != t.layer_of(t.allowed) {
                    changes.push((t.consumer, *a));
                }
            }
        }
        if !trial && let Some(resume) = self.trial(now, tracks, &changes) {
            changes.push(resume);
        }
        let bwe = self.bwe_rates(now, estimate, next_step.min(desired), desired);
        Plan {
            changes,
            desired,
            next_step,
            bwe,
        }
    }

    /// Whether a paused track is due for a try at its lowest layer (the first by priority).
    fn trial(
        &mut self,
        now: Instant,
        tracks: &[TrackDemand],
        changes: &[(ConsumerId, Allowed)],
    ) -> Option<(ConsumerId, Allowed)> {
        let allowed = |t: &TrackDemand| {
            changes
                .iter()
                .find(|(c, _)| *c == t.consumer)
                .map_or(t.allowed, |(_, a)| *a)
        };
        let mut paused: Vec<&TrackDemand> = tracks
            .iter()
            .filter(|t| t.kind == MediaKind::Video && !t.disabled)
            .filter(|t| allowed(t) == Allowed::Nothing && t.lowest().is_some())
            .collect();
        if paused.is_empty() {
            self.paused_since = None;
            if self.trial_until.is_some_and(|t| now >= t + TRIAL) {
                // The last try held: the next pause starts from the shortest wait.
                self.trial_until = None;
                self.trial_wait = None;
            }
            return None;
        }
        let since = *self.paused_since.get_or_insert(now);
        let wait = *self.trial_wait.get_or_insert(FIRST_TRIAL_WAIT);
        if now.saturating_duration_since(since) < wait {
            return None;
        }
        paused.sort_by_key(|t| (std::cmp::Reverse(t.priority), t.consumer));
        let t = paused[0];
        self.paused_since = None;
        self.trial_wait = Some((wait * 2).min(MAX_TRIAL_WAIT));
        self.trial_until = Some(now + TRIAL);
        Some((t.consumer, Allowed::UpTo(t.lowest()?)))
    }

    /// The rates for BWE: what would serve every preference, lowered for one round every
    /// [`REPROBE_EVERY`] while the estimate is short of it, so that raising it again makes
    /// str0m probe (it probes on a rise, not on a steady shortfall).
    fn bwe_rates(
        &mut self,
        now: Instant,
        estimate: u64,
        minimum: u64,
        desired: u64,
    ) -> Option<(u64, u64)> {
        let mut rates = (minimum, desired);
        if desired > estimate {
            let at = *self.reprobe_at.get_or_insert(now + REPROBE_EVERY);
            if self.lowered {
                self.lowered = false;
                self.reprobe_at = Some(now + REPROBE_EVERY);
            } else if now >= at {
                self.lowered = true;
                rates = (minimum.min(estimate), estimate);
            }
        } else {
            self.reprobe_at = None;
            self.lowered = false;
        }
        (self.rates != Some(rates)).then(|| {
            self.rates = Some(rates);
            rates
        })
    }
}

/// An order on allowances of one track: nothing, then each layer.
fn rank(t: &TrackDemand, a: Allowed) -> i64 {
    t.layer_of(a).map_or(-1, |l| l as i64)
}

/// The best allowances within `budget`: audio, then every video track's lowest layer by
/// priority, then upgrades by priority. Video is always given a cap (never `Any`), so that
/// a subscriber raising its preference climbs only when the allocator finds room.
fn ideal(budget: u64, tracks: &[TrackDemand], allow_pause: bool) -> Vec<Allowed> {
    // Tracks with nothing measured yet keep what they have.
    let mut out: Vec<Allowed> = tracks.iter().map(|t| t.allowed).collect();
    let mut left = budget;
    for t in tracks.iter().filter(|t| t.kind == MediaKind::Audio) {
        left = left.saturating_sub(t.cost(Allowed::Any));
    }
    let mut video: Vec<usize> = (0..tracks.len())
        .filter(|&i| tracks[i].kind == MediaKind::Video && !tracks[i].disabled)
        .collect();
    video.sort_by_key(|&i| (std::cmp::Reverse(tracks[i].priority), tracks[i].consumer));
    for &i in &video {
        let t = &tracks[i];
        let Some(low) = t.lowest() else {
            // Nothing received yet: nothing to decide.
            continue;
        };
        let cost = t.layer_bps[low];
        if cost <= left {
            left -= cost;
            out[i] = Allowed::UpTo(low);
        } else if allow_pause {
            out[i] = Allowed::Nothing;
        } else {
            left = 0;
            out[i] = Allowed::UpTo(low);
        }
    }
    for &i in &video {
        let t = &tracks[i];
        let Allowed::UpTo(low) = out[i] else {
            continue;
        };
        let base = t.layer_bps[low];
        let top = t.layer_of(Allowed::Any).unwrap_or(low);
        if let Some(l) = (low + 1..=top)
            .rev()
            .find(|&l| t.layer_bps[l] > 0 && t.layer_bps[l] - base.min(t.layer_bps[l]) <= left)
        {
            left -= t.layer_bps[l] - base.min(t.layer_bps[l]);
            out[i] = Allowed::UpTo(l);
        }
    }
    out
}

/// The total a subscriber would receive if the first track that can climb took one more
/// layer (or resumed) above the ideal allowances.
fn next_step(tracks: &[TrackDemand], ideal: &[Allowed]) -> Option<u64> {
    let now: u64 = tracks.iter().zip(ideal).map(|(t, a)| t.cost(*a)).sum();
    let mut order: Vec<usize> = (0..tracks.len())
        .filter(|&i| tracks[i].kind == MediaKind::Video && !tracks[i].disabled)
        .collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(tracks[i].priority), tracks[i].consumer));
    order.into_iter().find_map(|i| {
        let t = &tracks[i];
        let from = t.layer_of(ideal[i]);
        let top = t.layer_of(Allowed::Any)?;
        let next = match from {
            None => t.lowest()?,
            Some(l) if l < top => (l + 1..=top).find(|&n| t.layer_bps[n] > 0)?,
            Some(_) => return None,
        };
        Some(now - t.cost(ideal[i]) + t.layer_bps[next])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KBPS: u64 = 1000;

    fn camera(id: u64, allowed: Allowed) -> TrackDemand {
        TrackDemand {
            consumer: ConsumerId(id),
            kind: MediaKind::Video,
            priority: 0,
            disabled: false,
            preferred: usize::MAX,
            layer_bps: vec![150 * KBPS, 500 * KBPS, 1200 * KBPS],
            allowed,
        }
    }

    fn audio(id: u64) -> TrackDemand {
        TrackDemand {
            consumer: ConsumerId(id),
            kind: MediaKind::Audio,
            priority: 0,
            disabled: false,
            preferred: 0,
            layer_bps: vec![40 * KBPS],
            allowed: Allowed::Any,
        }
    }

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_narrow_link_steps_down_only_after_a_second_below() {
        let mut a = Allocator::default();
        let now = t0();
        let tracks = [audio(1), camera(2, Allowed::Any)];
        let early = a.allocate(now, 600 * KBPS, &tracks, false);
        assert!(early.changes.is_empty(), "{early:?}");
        let still = a.allocate(now + Duration::from_millis(900), 600 * KBPS, &tracks, false);
        assert!(still.changes.is_empty());
        let plan = a.allocate(
            now + Duration::from_millis(1000),
            600 * KBPS,
            &tracks,
            false,
        );
        // 540 kbit/s planned: audio 40, camera's middle layer 500.
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(1))]);
        assert_eq!(plan.desired, 1240 * KBPS);
    }

    #[test]
    fn an_estimate_that_recovers_in_time_changes_nothing() {
        let mut a = Allocator::default();
        let now = t0();
        let tracks = [camera(2, Allowed::Any)];
        a.allocate(now, 600 * KBPS, &tracks, false);
        a.allocate(
            now + Duration::from_millis(500),
            2000 * KBPS,
            &tracks,
            false,
        );
        let plan = a.allocate(
            now + Duration::from_millis(1200),
            600 * KBPS,
            &tracks,
            false,
        );
        assert!(plan.changes.is_empty(), "the timer starts over: {plan:?}");
    }

    #[test]
    fn a_grown_estimate_climbs_at_once_and_never_past_the_preference() {
        let mut a = Allocator::default();
        let mut cam = camera(2, Allowed::UpTo(0));
        let plan = a.allocate(t0(), 700 * KBPS, std::slice::from_ref(&cam), false);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(1))]);
        cam.allowed = Allowed::UpTo(1);
        cam.preferred = 1;
        let plan = a.allocate(t0(), 5000 * KBPS, std::slice::from_ref(&cam), false);
        assert!(plan.changes.is_empty(), "{plan:?}");
        cam.preferred = 2;
        let plan = a.allocate(t0(), 5000 * KBPS, &[cam], false);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(2))]);
    }

    #[test]
    fn screen_share_is_served_before_cameras() {
        let mut a = Allocator::default();
        let mut screen = camera(5, Allowed::Any);
        screen.priority = 1;
        let tracks = [camera(2, Allowed::Any), screen];
        let now = t0();
        a.allocate(now, 1000 * KBPS, &tracks, false);
        let plan = a.allocate(now + DOWNGRADE_AFTER, 1000 * KBPS, &tracks, false);
        // 900 planned: both lowest (300), then the screen climbs to its middle (+350).
        assert_eq!(
            plan.changes,
            vec![
                (ConsumerId(2), Allowed::UpTo(0)),
                (ConsumerId(5), Allowed::UpTo(1))
            ]
        );
    }

    #[test]
    fn video_is_paused_only_when_pausing_is_allowed() {
        let now = t0();
        let tracks = [audio(1), camera(2, Allowed::Any)];
        let mut a = Allocator::default();
        a.allocate(now, 100 * KBPS, &tracks, true);
        let plan = a.allocate(now + DOWNGRADE_AFTER, 100 * KBPS, &tracks, true);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::Nothing)]);
        // It resumes at the lowest layer once that fits.
        let paused = [audio(1), camera(2, Allowed::Nothing)];
        let plan = a.allocate(now + 2 * DOWNGRADE_AFTER, 300 * KBPS, &paused, true);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(0))]);

        let mut b = Allocator::default();
        b.allocate(now, 100 * KBPS, &tracks, false);
        let plan = b.allocate(now + DOWNGRADE_AFTER, 100 * KBPS, &tracks, false);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(0))]);
    }

    #[test]
    fn layers_not_received_are_neither_counted_nor_chosen() {
        let mut cam = camera(2, Allowed::UpTo(0));
        cam.layer_bps[2] = 0;
        let plan = Allocator::default().allocate(t0(), 5000 * KBPS, &[cam], false);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(1))]);
        assert_eq!(plan.desired, 500 * KBPS);
    }

    #[test]
    fn disabled_tracks_take_nothing_and_next_step_names_the_climb() {
        let mut off = camera(3, Allowed::Any);
        off.disabled = true;
        let tracks = [camera(2, Allowed::UpTo(0)), off];
        let plan = Allocator::default().allocate(t0(), 300 * KBPS, &tracks, false);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.desired, 1200 * KBPS);
        assert_eq!(plan.next_step, 500 * KBPS);
    }
}
