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

/// How long the estimate must have room for a climb before it happens.
pub const UPGRADE_AFTER: Duration = Duration::from_millis(750);

/// A climb followed by a step down within this is a climb that failed.
pub const UPGRADE_HELD: Duration = Duration::from_secs(8);
/// The wait before climbing again after the first failed climb; it doubles with each
/// failure, up to [`MAX_TRIAL_WAIT`]. An estimate briefly inflated by a probe's burst must
/// not make a subscriber oscillate between layers.
pub const FIRST_UPGRADE_WAIT: Duration = Duration::from_secs(4);

/// Share of the estimate that allocation plans to fill: the rest absorbs keyframes and
/// the noise of the estimate and of the layers' measured rates.
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
    /// What each of the producer's layers costs, lowest first, in bits per second (its
    /// recent mean rate, never below a lower layer's); 0 for a layer not being received.
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
    /// A new desired rate for str0m's BWE, when it changes.
    pub bwe: Option<u64>,
}

/// Per-subscriber allocation state.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    /// Since when the estimate has been below what is sent.
    below_since: Option<Instant>,
    /// The desired rate last given to BWE.
    rate: Option<u64>,
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
    /// When tracks last climbed (until the climb has held for [`UPGRADE_HELD`]).
    upgraded_at: Option<Instant>,
    /// How long climbing waits after a climb that did not hold.
    upgrade_wait: Duration,
    /// No climbing before then.
    upgrade_after: Option<Instant>,
    /// Since when the estimate has had room for a climb.
    above_since: Option<Instant>,
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

        let lower = tracks
            .iter()
            .zip(&ideal)
            .any(|(t, a)| rank(t, *a) < rank(t, t.allowed));
        let trial = self.trial_until.is_some_and(|t| now < t);
        if self
            .upgraded_at
            .is_some_and(|at| now.saturating_duration_since(at) >= UPGRADE_HELD)
        {
            // The last climb held: the next one need not wait.
            self.upgraded_at = None;
            self.upgrade_wait = Duration::ZERO;
        }
        let apply = if trial {
            self.below_since = None;
            false
        } else if estimate < usage {
            self.above_since = None;
            let since = *self.below_since.get_or_insert(now);
            let due = now.saturating_duration_since(since) >= DOWNGRADE_AFTER;
            if due && self.upgraded_at.take().is_some() {
                // A climb the link could not carry: the next one waits, longer each time.
                self.upgrade_wait =
                    (self.upgrade_wait * 2).clamp(FIRST_UPGRADE_WAIT, MAX_TRIAL_WAIT);
                self.upgrade_after = Some(now + self.upgrade_wait);
            }
            due
        } else {
            self.below_since = None;
            // Within the estimate: only pure upgrades (the estimate grew and stayed up for
            // a while, not one probe's burst), never a reshuffle, and not while a failed
            // climb is being waited out.
            let climb = !lower
                && tracks
                    .iter()
                    .zip(&ideal)
                    .any(|(t, a)| t.layer_of(*a) != t.layer_of(t.allowed));
            if climb {
                let since = *self.above_since.get_or_insert(now);
                now.saturating_duration_since(since) >= UPGRADE_AFTER
                    && self.upgrade_after.is_none_or(|at| now >= at)
            } else {
                self.above_since = None;
                false
            }
        };
        if apply {
            self.above_since = None;
        }
        let mut changes = Vec::new();
        if apply {
            self.below_since = None;
            for (t, a) in tracks.iter().zip(&ideal) {
                if t.layer_of(*a) != t.layer_of(t.allowed) {
                    changes.push((t.consumer, *a));
                }
            }
            if !lower && !changes.is_empty() {
                self.upgraded_at = Some(now);
            }
        }
        if !trial && let Some(resume) = self.trial(now, tracks, &changes) {
            changes.push(resume);
        }
        let bwe = self.bwe_rate(now, estimate, desired);
        Plan {
            changes,
            desired,
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

    /// The desired rate for BWE: what would serve every preference, lowered for one round
    /// every [`REPROBE_EVERY`] while the estimate is short of it, so that raising it again
    /// makes str0m probe (it probes on a rise, not on a steady shortfall). No minimum rate is
    /// asked for: padding toward one would keep the link busy with packets nobody watches.
    fn bwe_rate(&mut self, now: Instant, estimate: u64, desired: u64) -> Option<u64> {
        let mut rate = desired;
        if desired > estimate {
            let at = *self.reprobe_at.get_or_insert(now + REPROBE_EVERY);
            if self.lowered {
                self.lowered = false;
                self.reprobe_at = Some(now + REPROBE_EVERY);
            } else if now >= at {
                self.lowered = true;
                rate = estimate;
            }
        } else {
            self.reprobe_at = None;
            self.lowered = false;
        }
        (self.rate != Some(rate)).then(|| {
            self.rate = Some(rate);
            rate
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

    /// Allocates at `at` and again once a climb may happen; the second plan.
    fn held(a: &mut Allocator, at: Instant, estimate: u64, tracks: &[TrackDemand]) -> Plan {
        let first = a.allocate(at, estimate, tracks, false);
        assert!(
            first.changes.is_empty(),
            "no climb on the first sight of room: {first:?}"
        );
        a.allocate(at + UPGRADE_AFTER, estimate, tracks, false)
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
    fn a_grown_estimate_that_holds_climbs_and_never_past_the_preference() {
        let mut a = Allocator::default();
        let mut cam = camera(2, Allowed::UpTo(0));
        let t = t0();
        let plan = held(&mut a, t, 700 * KBPS, std::slice::from_ref(&cam));
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(1))]);
        cam.allowed = Allowed::UpTo(1);
        cam.preferred = 1;
        let plan = a.allocate(
            t + 2 * UPGRADE_AFTER,
            5000 * KBPS,
            std::slice::from_ref(&cam),
            false,
        );
        assert!(plan.changes.is_empty(), "{plan:?}");
        cam.preferred = 2;
        let plan = held(&mut a, t + 3 * UPGRADE_AFTER, 5000 * KBPS, &[cam]);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(2))]);
    }

    #[test]
    fn a_short_spike_of_the_estimate_climbs_nothing() {
        let mut a = Allocator::default();
        let low = [camera(2, Allowed::UpTo(0))];
        let t = t0();
        assert!(a.allocate(t, 5000 * KBPS, &low, false).changes.is_empty());
        let dip = a.allocate(t + UPGRADE_AFTER / 2, 200 * KBPS, &low, false);
        assert!(dip.changes.is_empty());
        let again = a.allocate(t + UPGRADE_AFTER, 5000 * KBPS, &low, false);
        assert!(again.changes.is_empty(), "the wait starts over: {again:?}");
    }

    #[test]
    fn a_climb_the_link_cannot_carry_is_retried_later_and_later() {
        let mut a = Allocator::default();
        let t = t0();
        let low = [camera(2, Allowed::UpTo(0))];
        let high = [camera(2, Allowed::UpTo(1))];
        // The estimate grows: the camera climbs.
        let plan = held(&mut a, t - UPGRADE_AFTER, 700 * KBPS, &low);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(1))]);
        // It cannot be carried: a second below, back down.
        a.allocate(t + Duration::from_secs(1), 300 * KBPS, &high, false);
        let plan = a.allocate(t + Duration::from_secs(2), 300 * KBPS, &high, false);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(0))]);
        // Another jump within the wait changes nothing; after it, the climb is tried again.
        let soon = a.allocate(t + Duration::from_secs(4), 700 * KBPS, &low, false);
        assert!(soon.changes.is_empty(), "{soon:?}");
        let later = t + Duration::from_secs(2) + FIRST_UPGRADE_WAIT;
        let plan = a.allocate(later, 700 * KBPS, &low, false);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(1))]);
        // (The room was seen at 4 s already, so it has held long enough.)
        // It fails again: the wait doubles.
        a.allocate(later + Duration::from_secs(1), 300 * KBPS, &high, false);
        a.allocate(later + Duration::from_secs(2), 300 * KBPS, &high, false);
        let wait_end = later + Duration::from_secs(2) + 2 * FIRST_UPGRADE_WAIT;
        let early = a.allocate(wait_end - UPGRADE_AFTER, 700 * KBPS, &low, false);
        assert!(early.changes.is_empty(), "{early:?}");
        let plan = a.allocate(wait_end, 700 * KBPS, &low, false);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(1))]);
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
        a.allocate(now + 2 * DOWNGRADE_AFTER, 300 * KBPS, &paused, true);
        let plan = a.allocate(
            now + 2 * DOWNGRADE_AFTER + UPGRADE_AFTER,
            300 * KBPS,
            &paused,
            true,
        );
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
        let plan = held(&mut Allocator::default(), t0(), 5000 * KBPS, &[cam]);
        assert_eq!(plan.changes, vec![(ConsumerId(2), Allowed::UpTo(1))]);
        assert_eq!(plan.desired, 500 * KBPS);
    }

    #[test]
    fn disabled_tracks_take_nothing() {
        let mut off = camera(3, Allowed::Any);
        off.disabled = true;
        let tracks = [camera(2, Allowed::UpTo(0)), off];
        let plan = Allocator::default().allocate(t0(), 300 * KBPS, &tracks, false);
        assert!(plan.changes.is_empty());
        assert_eq!(plan.desired, 1200 * KBPS);
    }
}
