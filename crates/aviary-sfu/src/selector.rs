//! Which simulcast layer one consumer forwards, decided per packet without side effects.
//!
//! Four layers are kept apart, as LiveKit's forwarder and mediasoup's simulcast consumer
//! keep them: *preferred* (what the subscriber asked for), *allowed* (the cap the bandwidth
//! allocator sets), *target* (the best layer within both that the publisher is sending)
//! and *current* (what is being forwarded). A consumer moves to its target only at a
//! keyframe of the target, so the decoder never gets a frame that refers to pictures of a
//! stream it was not given.

/// The allocator's say on a consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// No cap: the preference decides.
    Any,
    /// At most this layer (0 is the lowest).
    UpTo(usize),
    /// Nothing: the consumer is paused for lack of bandwidth.
    Nothing,
}

/// A consumer's layer state.
#[derive(Clone, Debug)]
pub(crate) struct LayerSelector {
    pub(crate) preferred: usize,
    pub(crate) allowed: Allowed,
    pub(crate) current: Option<usize>,
}

/// What to do with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Forward it.
    pub(crate) forward: bool,
    /// Forwarding it moves the consumer to its layer (a keyframe of the target).
    pub(crate) switch: bool,
    /// The layer whose keyframe the consumer waits for, if any.
    pub(crate) wanted: Option<usize>,
}

impl LayerSelector {
    pub(crate) fn new(preferred: usize) -> Self {
        Self {
            preferred,
            allowed: Allowed::Any,
            current: None,
        }
    }

    /// The highest layer the consumer may be on, or `None` when the allocator allows
    /// nothing.
    pub(crate) fn cap(&self) -> Option<usize> {
        match self.allowed {
            Allowed::Any => Some(self.preferred),
            Allowed::UpTo(l) => Some(l.min(self.preferred)),
            Allowed::Nothing => None,
        }
    }

    /// Starts over: the next layer is taken at a keyframe of the target.
    pub(crate) fn reset(&mut self) {
        self.current = None;
    }

    /// For a packet of `layer`, with `target` the layer the consumer should be on (see
    /// [`crate::layers::target_layer`]); `is_keyframe` is asked only when it matters.
    pub(crate) fn decide(
        &self,
        layer: usize,
        target: Option<usize>,
        is_keyframe: impl FnOnce() -> bool,
    ) -> Decision {
        let (forward, switch, wanted) = if self.current == Some(layer) {
            // Still on this layer until the target's keyframe arrives.
            (true, false, target.filter(|&t| t != layer))
        } else if target != Some(layer) {
            // Another layer's packet; a consumer with no layer yet waits for its target's
            // keyframe.
            (false, false, target.filter(|_| self.current.is_none()))
        } else if is_keyframe() {
            (true, true, None)
        } else {
            (false, false, Some(layer))
        };
        Decision {
            forward,
            switch,
            wanted,
        }
    }

    /// The consumer forwarded a switching packet of `layer`.
    pub(crate) fn switched(&mut self, layer: usize) {
        self.current = Some(layer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_consumer_waits_for_its_targets_keyframe() {
        let s = LayerSelector::new(2);
        let d = s.decide(0, Some(2), || panic!("not asked for another layer"));
        assert_eq!((d.forward, d.wanted), (false, Some(2)));
        let d = s.decide(2, Some(2), || false);
        assert_eq!((d.forward, d.wanted), (false, Some(2)));
        let d = s.decide(2, Some(2), || true);
        assert_eq!((d.forward, d.switch, d.wanted), (true, true, None));
    }

    #[test]
    fn it_stays_on_its_layer_until_the_target_keyframe() {
        let mut s = LayerSelector::new(2);
        s.switched(0);
        let d = s.decide(0, Some(2), || unreachable!());
        assert_eq!((d.forward, d.switch, d.wanted), (true, false, Some(2)));
        // Another layer's packets are not its business once it has a layer.
        let d = s.decide(1, Some(2), || unreachable!());
        assert_eq!((d.forward, d.wanted), (false, None));
        let d = s.decide(2, Some(2), || true);
        assert!(d.forward && d.switch);
        s.switched(2);
        let d = s.decide(2, Some(2), || unreachable!());
        assert_eq!((d.forward, d.switch, d.wanted), (true, false, None));
    }

    #[test]
    fn the_cap_is_the_lower_of_preference_and_allocation() {
        let mut s = LayerSelector::new(1);
        assert_eq!(s.cap(), Some(1));
        s.allowed = Allowed::UpTo(2);
        assert_eq!(s.cap(), Some(1));
        s.allowed = Allowed::UpTo(0);
        assert_eq!(s.cap(), Some(0));
        s.allowed = Allowed::Nothing;
        assert_eq!(s.cap(), None);
    }
}
