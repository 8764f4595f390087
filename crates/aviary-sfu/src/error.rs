//! One error enum per operation.

use crate::TransportId;

/// Why a transport could not be found or used.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No transport with this id (it never existed or is closed).
    #[error("transport {0} not found")]
    NotFound(TransportId),
}

/// Why an offer or answer was refused.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    /// No transport with this id.
    #[error("transport {0} not found")]
    NotFound(TransportId),
    /// The SDP text did not parse.
    #[error("malformed sdp: {0}")]
    Malformed(String),
    /// The SDP parsed but str0m refused it.
    #[error("sdp refused: {0}")]
    Refused(String),
    /// An answer arrived while no offer of ours was outstanding.
    #[error("no offer is pending on transport {0}")]
    NoPendingOffer(TransportId),
    /// The operation does not fit the transport's direction (e.g. an offer to a subscriber).
    #[error("wrong direction for transport {0}")]
    WrongDirection(TransportId),
}

/// Why a data message could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SendDataError {
    /// No transport with this id.
    #[error("transport {0} not found")]
    NotFound(TransportId),
    /// The data channel of that kind is not open yet.
    #[error("data channel not open")]
    NotOpen,
    /// The channel's send buffer is over its bound; the message was dropped.
    #[error("data channel buffer full")]
    BufferFull,
}

/// Why a consumer could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// No such producer.
    #[error("producer {0} not found")]
    ProducerNotFound(crate::ProducerId),
    /// No such transport.
    #[error("transport {0} not found")]
    TransportNotFound(TransportId),
    /// Consumers go on subscriber transports only.
    #[error("transport {0} is not a subscriber")]
    NotASubscriber(TransportId),
    /// No such consumer.
    #[error("consumer {0} not found")]
    ConsumerNotFound(crate::ConsumerId),
}
