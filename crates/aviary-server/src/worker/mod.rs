//! Media workers: one thread per core, each owning whole rooms (their `Router`s) and one
//! UDP socket. Signaling talks to a worker only through [`WorkerCommand`]s in and
//! [`MediaEvent`]s out; the packet path takes no locks.

mod event_loop;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::mpsc;

use aviary_sfu::TransportDirection;
use tokio::sync::mpsc::UnboundedSender;

/// Which participant of which room a command is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Room sid.
    pub room: String,
    /// Participant sid.
    pub participant: String,
}

/// What signaling asks of a worker.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Creates the participant's subscriber transport; its offer comes back as an event.
    AddPeer {
        /// Who.
        key: PeerKey,
        /// Where this peer's events go.
        events: UnboundedSender<MediaEvent>,
    },
    /// The client's offer for its publisher connection.
    PublisherOffer {
        /// Who.
        key: PeerKey,
        /// Offer SDP.
        sdp: String,
    },
    /// The client's answer to our subscriber offer.
    SubscriberAnswer {
        /// Who.
        key: PeerKey,
        /// Answer SDP.
        sdp: String,
    },
    /// A trickled client candidate.
    Candidate {
        /// Who.
        key: PeerKey,
        /// Which connection.
        target: TransportDirection,
        /// The `candidate:...` line.
        candidate: String,
    },
    /// The participant left: close its transports.
    RemovePeer {
        /// Who.
        key: PeerKey,
    },
    /// Stops the thread.
    Shutdown,
}

/// What a worker tells one participant's session.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// An offer for the subscriber connection.
    SubscriberOffer(String),
    /// The answer to the client's publisher offer.
    PublisherAnswer(String),
    /// ICE and DTLS are up on that connection.
    Connected(TransportDirection),
    /// The connection failed or was lost.
    Closed(TransportDirection),
    /// A negotiation step on that connection was refused; the text says why.
    NegotiationFailed(TransportDirection, String),
}

/// Settings shared by every worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Number of worker threads.
    pub threads: usize,
    /// Address to bind UDP sockets on (port taken from `first_udp_port`).
    pub bind_ip: IpAddr,
    /// Worker N binds `first_udp_port + N`; 0 picks free ports.
    pub first_udp_port: u16,
    /// The IP advertised in ICE candidates.
    pub node_ip: IpAddr,
}

/// A handle to send commands to one worker.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: mpsc::Sender<WorkerCommand>,
    waker: Arc<mio::Waker>,
    /// The worker's UDP address (as bound).
    pub udp_addr: SocketAddr,
}

impl WorkerHandle {
    /// Queues a command and wakes the worker.
    pub fn send(&self, cmd: WorkerCommand) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// All workers of the process.
pub struct WorkerPool {
    handles: Vec<WorkerHandle>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl WorkerPool {
    /// Binds every worker's socket and starts its thread.
    pub fn start(config: &WorkerConfig) -> io::Result<Self> {
        let cert = aviary_sfu::generate_dtls_cert()
            .ok_or_else(|| io::Error::other("cannot generate a DTLS certificate"))?;
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for index in 0..config.threads.max(1) {
            let port = if config.first_udp_port == 0 {
                0
            } else {
                config
                    .first_udp_port
                    .checked_add(index as u16)
                    .ok_or_else(|| io::Error::other("udp port range overflows"))?
            };
            let bind = SocketAddr::new(config.bind_ip, port);
            let std_socket = std::net::UdpSocket::bind(bind)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {bind}: {e}")))?;
            std_socket.set_nonblocking(true)?;
            let udp_addr = std_socket.local_addr()?;
            let advertised = SocketAddr::new(config.node_ip, udp_addr.port());
            let (tx, rx) = mpsc::channel();
            let mut worker =
                event_loop::Worker::new(index, std_socket, advertised, cert.clone(), rx)?;
            let waker = worker.waker();
            let thread = std::thread::Builder::new()
                .name(format!("aviary-worker-{index}"))
                .spawn(move || worker.run())?;
            handles.push(WorkerHandle {
                tx,
                waker,
                udp_addr,
            });
            threads.push(thread);
        }
        Ok(Self { handles, threads })
    }

    /// The worker with this index.
    pub fn get(&self, index: usize) -> &WorkerHandle {
        &self.handles[index % self.handles.len()]
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: a pool has at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Stops every worker and waits for them.
    pub fn shutdown(self) {
        for h in &self.handles {
            h.send(WorkerCommand::Shutdown);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
