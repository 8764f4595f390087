//! One direction of a shaped link, sans I/O: a token-bucket bottleneck with a drop-tail
//! queue, seeded random loss, a fixed delay and seeded reordering (a share of datagrams
//! held back so that later ones overtake them). Time is passed in, so the same code that
//! shapes real datagrams is tested on a simulated clock.

use std::time::{Duration, Instant};

/// How a link treats what crosses it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkParams {
    /// Bits per second; `None` is no bottleneck.
    pub rate: Option<u64>,
    /// Bytes the bottleneck's queue holds; a datagram that would overflow it is dropped.
    pub queue: usize,
    /// Bytes that may pass at once after a quiet spell (the bucket's depth).
    pub burst: usize,
    /// Added to every datagram's delivery.
    pub delay: Duration,
    /// Share of datagrams dropped at random, in [0, 1].
    pub loss: f64,
    /// Share of datagrams held back by `reorder_delay`, in [0, 1]: those sent after them
    /// within that time arrive first.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
}

impl Default for LinkParams {
    fn default() -> Self {
        Self {
            rate: None,
            queue: 64 * 1024,
            burst: 1500,
            delay: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(30),
        }
    }
}

/// What became of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it at this instant.
    Deliver(Instant),
    /// Dropped at random.
    Lost,
    /// Dropped: the queue was full.
    Overflow,
}

/// Counters of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams delivered (or scheduled to be).
    pub passed: u64,
    /// Datagrams dropped at random.
    pub lost: u64,
    /// Datagrams dropped by the full queue.
    pub overflowed: u64,
    /// Datagrams held back for others to overtake (counted in `passed` too).
    pub reordered: u64,
}

impl LinkStats {
    /// What was counted since `before`.
    pub fn since(&self, before: &LinkStats) -> LinkStats {
        LinkStats {
            passed: self.passed - before.passed,
            lost: self.lost - before.lost,
            overflowed: self.overflowed - before.overflowed,
            reordered: self.reordered - before.reordered,
        }
    }
}

/// One direction of one flow.
#[derive(Clone, Debug)]
pub struct Link {
    /// When the bottleneck will have sent everything admitted so far.
    free_at: Option<Instant>,
    rng: u64,
    /// What it did so far.
    pub stats: LinkStats,
}

impl Link {
    /// A link whose random losses follow from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            free_at: None,
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            stats: LinkStats::default(),
        }
    }

    /// A datagram of `bytes` arrives at `now`.
    pub fn offer(&mut self, params: &LinkParams, now: Instant, bytes: usize) -> Verdict {
        if params.loss > 0.0 && self.next_f64() < params.loss {
            self.stats.lost += 1;
            return Verdict::Lost;
        }
        let leaves = match params.rate.filter(|&r| r > 0) {
            None => now,
            Some(rate) => {
                let per_byte = |n: usize| Duration::from_secs_f64(n as f64 * 8.0 / rate as f64);
                // Tokens saved while the link was idle let up to `burst` bytes through at
                // once: the virtual clock may lag `now` by that much.
                let earliest = now.checked_sub(per_byte(params.burst)).unwrap_or(now);
                let start = self.free_at.map_or(earliest, |f| f.max(earliest));
                let backlog =
                    start.saturating_duration_since(now).as_secs_f64() * rate as f64 / 8.0;
                if backlog as usize + bytes > params.queue {
                    self.stats.overflowed += 1;
                    return Verdict::Overflow;
                }
                let done = start + per_byte(bytes);
                self.free_at = Some(done);
                done.max(now)
            }
        };
        self.stats.passed += 1;
        let mut at = leaves + params.delay;
        if params.reorder > 0.0 && self.next_f64() < params.reorder {
            self.stats.reordered += 1;
            at += params.reorder_delay;
        }
        Verdict::Deliver(at)
    }

    /// A value in [0, 1) (xorshift64*).
    fn next_f64(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(rate: u64, queue: usize) -> LinkParams {
        LinkParams {
            rate: Some(rate),
            queue,
            burst: 1500,
            ..Default::default()
        }
    }

    /// Offers `bytes`-sized datagrams every `gap` for `total`; returns what was delivered
    /// (bytes) within the window and the link.
    fn drive(p: &LinkParams, bytes: usize, gap: Duration, total: Duration) -> (usize, Link) {
        let start = Instant::now();
        let mut link = Link::new(7);
        let mut delivered = 0;
        let mut t = start;
        while t < start + total {
            if let Verdict::Deliver(at) = link.offer(p, t, bytes)
                && at <= start + total
            {
                delivered += bytes;
            }
            t += gap;
        }
        (delivered, link)
    }

    #[test]
    fn a_bottleneck_passes_its_rate_and_drops_the_excess() {
        // 2 Mbit/s offered into 500 kbit/s for 10 s.
        let p = params(500_000, 20_000);
        let (delivered, link) = drive(&p, 1000, Duration::from_millis(4), Duration::from_secs(10));
        let rate = delivered as f64 * 8.0 / 10.0;
        assert!(
            (480_000.0..=520_000.0).contains(&rate),
            "{rate} bit/s through"
        );
        assert!(link.stats.overflowed > 1500, "{:?}", link.stats);
        assert_eq!(link.stats.lost, 0);
    }

    #[test]
    fn under_its_rate_nothing_waits_but_the_delay() {
        let mut p = params(1_000_000, 20_000);
        p.delay = Duration::from_millis(40);
        let mut link = Link::new(1);
        let now = Instant::now();
        for i in 0..100 {
            let t = now + Duration::from_millis(20 * i);
            // 1000 bytes per 20 ms is 400 kbit/s.
            assert_eq!(
                link.offer(&p, t, 1000),
                Verdict::Deliver(t + Duration::from_millis(40))
            );
        }
    }

    #[test]
    fn the_queue_bounds_the_wait() {
        let p = params(100_000, 10_000);
        let mut link = Link::new(1);
        let now = Instant::now();
        let mut last = now;
        for _ in 0..50 {
            if let Verdict::Deliver(at) = link.offer(&p, now, 1000) {
                last = at;
            }
        }
        // 10 KB queue plus the burst at 100 kbit/s: a little under a second.
        let wait = last - now;
        assert!(wait <= Duration::from_millis(1000), "{wait:?}");
        assert_eq!(link.stats.passed, 11, "{:?}", link.stats);
    }

    #[test]
    fn loss_is_random_but_seeded() {
        let p = LinkParams {
            loss: 0.05,
            ..Default::default()
        };
        let run = |seed| {
            let mut link = Link::new(seed);
            let now = Instant::now();
            (0..10_000)
                .map(|_| link.offer(&p, now, 100) == Verdict::Lost)
                .collect::<Vec<bool>>()
        };
        let a = run(3);
        assert_eq!(a, run(3), "same seed, same losses");
        assert_ne!(a, run(4));
        let lost = a.iter().filter(|&&l| l).count();
        assert!((400..600).contains(&lost), "{lost} of 10000 lost at 5 %");
    }

    #[test]
    fn reordered_datagrams_are_overtaken_by_later_ones() {
        let p = LinkParams {
            reorder: 0.1,
            reorder_delay: Duration::from_millis(30),
            ..Default::default()
        };
        let mut link = Link::new(5);
        let start = Instant::now();
        // 1000 datagrams 10 ms apart: the order they arrive in.
        let mut arrivals: Vec<(Instant, usize)> = (0..1000)
            .map(|i| {
                let t = start + Duration::from_millis(10 * i as u64);
                match link.offer(&p, t, 100) {
                    Verdict::Deliver(at) => (at, i),
                    other => panic!("{other:?}: nothing is lost here"),
                }
            })
            .collect();
        arrivals.sort();
        let order: Vec<usize> = arrivals.iter().map(|&(_, i)| i).collect();
        let overtaken = order.windows(2).filter(|w| w[0] > w[1]).count();
        let held = link.stats.reordered as usize;
        assert!(
            (60..140).contains(&held),
            "{held} of 1000 held back at 10 %"
        );
        // Each held datagram arrives after the next two or three sent.
        assert!(
            overtaken >= held * 9 / 10,
            "{overtaken} inversions for {held} held back"
        );
        assert_eq!(link.stats.passed, 1000);
    }
}
