//! What one client can make a room hold: every list, string and count a request can grow
//! is bounded here, and a request past a bound is refused (with the upstream error where
//! upstream has one), not trimmed silently. `docs/robustness.md` lists each with its
//! default and upstream equivalent.

use std::fmt;

/// Tracks one participant may publish (published and announced). Upstream has no such
/// limit; its `limit.num_tracks` is the node's (see `RoomManager::check_join`).
pub const MAX_TRACKS: usize = 64;
/// Tracks announced (`AddTrackRequest`) whose media has not arrived yet.
pub const MAX_PENDING_TRACKS: usize = 16;
/// Largest `AddTrackRequest`, encoded: names, cids, stream ids and layer lists together.
pub const MAX_ADD_TRACK_BYTES: usize = 16 * 1024;
/// Simulcast layers a track may announce (the media core forwards at most four).
pub const MAX_LAYERS: usize = 4;
/// Track sids (and participant entries) in one `UpdateSubscription`, `UpdateTrackSettings`
/// or `SyncState` list.
pub const MAX_LIST: usize = 512;
/// Entries in one `SubscriptionPermission`.
pub const MAX_TRACK_PERMISSIONS: usize = 512;
/// Trickled candidates one link may send per connection (publisher, subscriber).
pub const MAX_CANDIDATES: usize = 64;
/// Largest SDP (offer or answer) taken from a client.
pub const MAX_SDP: usize = 256 * 1024;

/// The kinds of limit a client can hit, each logged once per participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Limit {
    /// [`MAX_TRACKS`].
    Tracks,
    /// [`MAX_PENDING_TRACKS`].
    PendingTracks,
    /// [`MAX_ADD_TRACK_BYTES`] or [`MAX_LAYERS`].
    TrackSize,
    /// [`MAX_LIST`] or [`MAX_TRACK_PERMISSIONS`].
    List,
    /// [`MAX_CANDIDATES`].
    Candidates,
    /// [`MAX_SDP`].
    Sdp,
    /// `limit.max_metadata_size`, `limit.max_attributes_size`, `limit.max_participant_name_length`.
    Metadata,
    /// `limit.subscription_limit_audio` / `_video`.
    Subscriptions,
}

impl Limit {
    pub(super) fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Limit::Tracks => "tracks per participant",
            Limit::PendingTracks => "tracks announced and not yet published",
            Limit::TrackSize => "track description size",
            Limit::List => "list length",
            Limit::Candidates => "trickled candidates",
            Limit::Sdp => "SDP size",
            Limit::Metadata => "metadata size",
            Limit::Subscriptions => "subscriptions",
        };
        f.write_str(s)
    }
}
