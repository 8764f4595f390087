//! A participant's session as the room keeps it: what outlives the WebSocket.
//!
//! The WebSocket is only a signal *link* that attaches to a session and detaches from it:
//! join attaches the first, a resume attaches a new one (closing the old), a closed socket
//! only detaches. Negotiation state (offer ids, trickled candidates) and media state live
//! here, so that a resume finds them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// One signal link (one accepted WebSocket), unique in the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link-{}", self.0)
    }
}

/// Negotiation and link state of one participant.
#[derive(Debug)]
pub struct Session {
    /// The signal link attached now, if any.
    pub link: Option<LinkId>,
    /// Since when no link has been attached (a session starts attached).
    pub detached_since: Option<Instant>,
    /// Id of the last subscriber offer sent.
    pub offer_id: u32,
    /// Ids of the client's publisher offers not answered yet, oldest first.
    pub publisher_offer_ids: VecDeque<u32>,
    /// The local ICE ufrag whose candidates were last trickled, by `SignalTarget`
    /// (publisher 0, subscriber 1): candidates are trickled once per ICE session.
    pub trickled_ufrag: [String; 2],
    /// Since when ICE has lost the client, per connection (publisher 0, subscriber 1);
    /// it may come back by an ICE restart. The grace runs from here.
    pub media_lost: [Option<Instant>; 2],
    /// A resume already restarted the grace of the current loss (it is restarted once,
    /// so that resuming again and again cannot hold a dead session).
    pub grace_extended: bool,
    /// Limits this participant hit that were logged (a [`super::limits::Limit`] bit each):
    /// each is logged once, then only at debug level.
    pub limits_logged: u32,
    /// Candidates trickled on the attached link, by `SignalTarget`.
    pub candidates: [usize; 2],
    /// The last subscriber offer sent, by link: a copy of it sent again on the same link
    /// (an offer the worker had in flight, sent again for a resume that raced with it)
    /// is not sent twice.
    pub last_offer: Option<(LinkId, u64)>,
    /// Set once the participant has been ACTIVE (its media connected at least once).
    pub was_active: bool,
    /// When it joined.
    pub joined_at: Instant,
    /// `SimulateScenario.disconnect_signal_on_resume`: until then, a resume's link is
    /// closed once the resume's messages are out.
    pub disconnect_on_resume: Option<Instant>,
    /// `SimulateScenario.disconnect_signal_on_resume_no_messages`: until then, a resume's
    /// link is closed before any message (at most this many more times).
    pub refuse_resumes: Option<(Instant, u8)>,
    /// The highest reliable data sequence relayed from this participant; the worker writes
    /// it, a resume reads it (`ReconnectResponse.last_message_seq`).
    pub last_reliable_seq: Arc<AtomicU32>,
}

impl Session {
    /// A session attached to `link`, joined at `now`.
    pub fn new(link: LinkId, now: Instant) -> Self {
        Self {
            link: Some(link),
            detached_since: None,
            offer_id: 0,
            publisher_offer_ids: VecDeque::new(),
            trickled_ufrag: Default::default(),
            media_lost: [None; 2],
            grace_extended: false,
            limits_logged: 0,
            candidates: [0; 2],
            last_offer: None,
            was_active: false,
            joined_at: now,
            disconnect_on_resume: None,
            refuse_resumes: None,
            last_reliable_seq: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Attaches a new link; returns the one it replaces.
    pub fn attach(&mut self, link: LinkId) -> Option<LinkId> {
        self.detached_since = None;
        self.candidates = [0; 2];
        self.link.replace(link)
    }

    /// Detaches `link` if it is the one attached (a replaced link's late close is ignored);
    /// returns whether it was.
    pub fn detach(&mut self, link: LinkId, now: Instant) -> bool {
        if self.link != Some(link) {
            return false;
        }
        self.link = None;
        self.detached_since = Some(now);
        true
    }

    /// Since when its media has been lost (the earliest of its connections), if it has.
    pub fn media_lost_since(&self) -> Option<Instant> {
        self.media_lost.iter().flatten().min().copied()
    }

    /// The highest reliable data sequence relayed from this participant.
    pub fn last_reliable_seq(&self) -> u32 {
        self.last_reliable_seq.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_link_cannot_detach_its_successor() {
        let t0 = Instant::now();
        let mut s = Session::new(LinkId(1), t0);
        assert_eq!(s.attach(LinkId(2)), Some(LinkId(1)));
        assert!(
            !s.detach(LinkId(1), t0),
            "the old link closing late changes nothing"
        );
        assert_eq!(s.link, Some(LinkId(2)));
        assert!(s.detach(LinkId(2), t0));
        assert_eq!((s.link, s.detached_since), (None, Some(t0)));
        assert_eq!(s.attach(LinkId(3)), None);
        assert_eq!(s.detached_since, None);
    }
}
