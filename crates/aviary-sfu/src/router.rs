//! The router: one per room, owner of every transport in it.
//!
//! It holds no locks and no clock; the worker that owns it feeds it time and datagrams and
//! drains its outputs (see the crate docs for the run-loop contract).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, IceCreds, Input, Rtc};
use tracing::debug;

use crate::transport::{CloseReason, DataKind, Transport, TransportDirection, TransportOptions};
use crate::{DtlsCert, NegotiateError, SendDataError, TransportError, TransportId};

/// Lasting settings of a router.
#[derive(Clone, Debug, Default)]
pub struct RouterConfig {
    /// Certificate shared by every transport; generated per transport when unset.
    pub dtls_cert: Option<DtlsCert>,
    /// The local addresses (and protocols) offered as host candidates.
    pub candidates: Vec<(SocketAddr, Protocol)>,
}

/// What the router asks of its owner.
#[derive(Debug)]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// Something happened.
    Event(Event),
    /// Nothing more to do until this instant (or the next input).
    Timeout(Instant),
}

/// Things that happened inside the router.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// ICE and DTLS are up on this transport.
    TransportConnected {
        /// Which transport.
        transport: TransportId,
    },
    /// The transport is gone and its id is no longer valid.
    TransportClosed {
        /// Which transport.
        transport: TransportId,
        /// Why.
        reason: CloseReason,
    },
    /// The server has an offer for a subscriber transport; send it to the client.
    OfferReady {
        /// Which transport.
        transport: TransportId,
        /// The offer's SDP.
        sdp: String,
    },
    /// A LiveKit data channel opened.
    DataChannelOpen {
        /// Which transport.
        transport: TransportId,
        /// Which channel.
        kind: DataKind,
    },
    /// A data channel message arrived from the client.
    DataReceived {
        /// Which transport.
        transport: TransportId,
        /// On which channel.
        kind: DataKind,
        /// The message, as sent.
        data: Vec<u8>,
    },
}

/// How long to sleep when no transport wants a wake-up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// A room's media plane.
pub struct Router {
    config: RouterConfig,
    transports: HashMap<TransportId, Transport>,
    next_id: u64,
    out: VecDeque<Output>,
    now: Instant,
}

impl Router {
    /// A router with no transports, at time `now`.
    pub fn new(config: RouterConfig, now: Instant) -> Self {
        Self {
            config,
            transports: HashMap::new(),
            next_id: 1,
            out: VecDeque::new(),
            now,
        }
    }

    /// Creates a transport. A subscriber gets the two LiveKit data channels and its first
    /// offer comes out as [`Event::OfferReady`].
    pub fn create_transport(&mut self, options: TransportOptions) -> TransportId {
        let id = TransportId(self.next_id);
        self.next_id += 1;
        let mut builder = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_local_ice_credentials(IceCreds {
                ufrag: options.ice_ufrag.clone(),
                pass: options.ice_pwd.clone(),
            });
        if let Some(cert) = &self.config.dtls_cert {
            builder = builder.set_dtls_cert(cert.clone());
        }
        let mut rtc = builder.build(self.now);
        for (addr, proto) in &self.config.candidates {
            match Candidate::host(*addr, *proto) {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => debug!(%addr, "unusable local candidate: {e}"),
            }
        }
        let direction = options.direction;
        let mut transport = Transport::new(id, options, rtc);
        if direction == TransportDirection::Subscriber {
            transport.add_server_channels();
            transport.offer_if_needed(&mut self.out);
        }
        transport.drive(&mut self.out);
        self.transports.insert(id, transport);
        self.reap(id);
        id
    }

    /// Closes a transport at once; no event follows for it.
    pub fn close_transport(&mut self, id: TransportId) -> Result<(), TransportError> {
        let mut t = self
            .transports
            .remove(&id)
            .ok_or(TransportError::NotFound(id))?;
        t.rtc.disconnect();
        Ok(())
    }

    /// Answers a publisher's offer.
    pub fn accept_offer(&mut self, id: TransportId, sdp: &str) -> Result<String, NegotiateError> {
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(NegotiateError::NotFound(id))?;
        let answer = t.accept_offer(sdp, &mut self.out);
        self.reap(id);
        answer
    }

    /// Takes a subscriber's answer to our offer; a further offer follows if changes waited.
    pub fn accept_answer(&mut self, id: TransportId, sdp: &str) -> Result<(), NegotiateError> {
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(NegotiateError::NotFound(id))?;
        let result = t.accept_answer(sdp, &mut self.out);
        self.reap(id);
        result
    }

    /// Adds a trickled remote candidate (`candidate:...` line). Empty means end of candidates.
    pub fn add_remote_candidate(
        &mut self,
        id: TransportId,
        candidate: &str,
    ) -> Result<(), NegotiateError> {
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(NegotiateError::NotFound(id))?;
        if candidate.trim().is_empty() {
            return Ok(());
        }
        t.add_remote_candidate(candidate)?;
        t.drive(&mut self.out);
        Ok(())
    }

    /// Sends a message on one of the transport's data channels.
    pub fn send_data(
        &mut self,
        id: TransportId,
        kind: DataKind,
        data: &[u8],
    ) -> Result<(), SendDataError> {
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(SendDataError::NotFound(id))?;
        let result = t.send_data(kind, data, &mut self.out);
        self.reap(id);
        result
    }

    /// A datagram for `id`, already demultiplexed by the caller.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        id: TransportId,
        receive: Receive<'_>,
    ) -> Result<(), TransportError> {
        self.now = now;
        let t = self
            .transports
            .get_mut(&id)
            .ok_or(TransportError::NotFound(id))?;
        t.handle_input(Input::Receive(now, receive), &mut self.out);
        self.reap(id);
        Ok(())
    }

    /// Advances time: every transport whose deadline has passed gets its timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let due: Vec<TransportId> = self
            .transports
            .values()
            .filter(|t| t.next_timeout.is_some_and(|at| at <= now))
            .map(|t| t.id())
            .collect();
        for id in due {
            if let Some(t) = self.transports.get_mut(&id) {
                t.handle_input(Input::Timeout(now), &mut self.out);
            }
            self.reap(id);
        }
    }

    /// The next thing to do; [`Output::Timeout`] once there is nothing left.
    #[must_use]
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        let next = self
            .transports
            .values()
            .filter_map(|t| t.next_timeout)
            .min()
            .unwrap_or(self.now + IDLE_TIMEOUT);
        Output::Timeout(next)
    }

    /// The transport with this id.
    pub fn transport(&self, id: TransportId) -> Option<&Transport> {
        self.transports.get(&id)
    }

    /// Number of open transports.
    pub fn transport_count(&self) -> usize {
        self.transports.len()
    }

    /// Removes a transport that failed and reports it.
    fn reap(&mut self, id: TransportId) {
        let Some(reason) = self.transports.get(&id).and_then(|t| t.closed.clone()) else {
            return;
        };
        if let Some(mut t) = self.transports.remove(&id) {
            t.rtc.disconnect();
        }
        self.out.push_back(Output::Event(Event::TransportClosed {
            transport: id,
            reason,
        }));
    }
}
