//! Aviary's media core: a sans-IO selective forwarding unit built on str0m.
//!
//! The vocabulary is mediasoup's: a [`Router`] per room owns [`Transport`]s (one str0m
//! `Rtc` each, in RTP mode with ICE-lite). Nothing here opens a socket, spawns a thread or
//! reads the clock: the caller owns the network and the time.
//!
//! # Run loop
//!
//! The contract is str0m's, one level up:
//!
//! 1. Feed the router one input: [`Router::handle_receive`] for a datagram that the caller
//!    has already demultiplexed to a transport (see [`demux`]), or [`Router::handle_timeout`]
//!    when the last [`Output::Timeout`] is due. Signaling commands (`create_transport`,
//!    `accept_offer`, ...) are inputs too.
//! 2. Drain [`Router::poll_output`] until it returns [`Output::Timeout`]: send every
//!    [`Output::Transmit`], act on every [`Output::Event`].
//!
//! Errors are returned for bad input (a malformed SDP, an unknown transport); a transport whose
//! `Rtc` fails is closed with [`Event::TransportClosed`], never by a panic.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod allocator;
mod consumer;
pub mod demux;
mod error;
mod ids;
mod layers;
mod loudness;
mod output;
mod producer;
mod rate;
mod red_answer;
mod rewrite;
mod router;
mod selector;
mod transport;

pub use consumer::{Consumer, ConsumerOptions};
pub use error::{ConsumeError, NegotiateError, SendDataError, TransportError};
pub use ids::{ConsumerId, ProducerId, TransportId};
pub use output::{
    CloseReason, ConsumerCloseReason, DataChannelLabels, DataKind, Event, LinkReport, Output,
    RouterStats,
};
pub use producer::Producer;
pub use red_answer::OfferedAudio;
pub use router::{CongestionControl, Router, RouterConfig};
pub use selector::Allowed;
pub use transport::{Transport, TransportDirection, TransportOptions};

/// str0m's media types that appear in this crate's API.
pub use str0m::media::{MediaKind, Mid, Rid};

pub use str0m::config::DtlsCert;
/// Re-exported so that callers build inputs and read outputs with the same types.
pub use str0m::net::{Protocol, Receive, Transmit};

/// Generates a DTLS certificate with str0m's default crypto provider.
///
/// Generating a key pair is expensive, so a worker makes one and shares it with every
/// transport it owns (as mediasoup does per worker).
pub fn generate_dtls_cert() -> Option<DtlsCert> {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
}
