//! Data packets the server itself sends (RoomService.SendData). Packets between
//! participants never come here: the media worker relays them.

use livekit_protocol as proto;
use prost::Message as _;

use super::ServiceError;
use super::core::RoomCore;
use crate::ids::ParticipantSid;
use crate::worker::WorkerCommand;
use aviary_sfu::DataKind;

impl RoomCore {
    /// RoomService.SendData: a user packet from the server to the named participants (by
    /// identity or sid; everyone when none are named).
    pub fn send_data(&mut self, req: &proto::SendDataRequest) -> Result<(), ServiceError> {
        let mut to = Vec::new();
        for identity in &req.destination_identities {
            let p = self
                .by_identity(identity)
                .ok_or_else(|| ServiceError::ParticipantNotFound(identity.clone()))?;
            to.push(p.sid());
        }
        #[allow(deprecated)]
        for sid in &req.destination_sids {
            self.participant(sid)
                .ok_or_else(|| ServiceError::ParticipantNotFound(sid.clone()))?;
            to.push(ParticipantSid::new(sid.clone()));
        }
        let kind = if req.kind == proto::data_packet::Kind::Lossy as i32 {
            DataKind::Lossy
        } else {
            DataKind::Reliable
        };
        #[allow(deprecated)]
        let packet = proto::DataPacket {
            kind: req.kind,
            destination_identities: req.destination_identities.clone(),
            value: Some(proto::data_packet::Value::User(proto::UserPacket {
                payload: req.data.clone(),
                topic: req.topic.clone(),
                destination_identities: req.destination_identities.clone(),
                ..Default::default()
            })),
            ..Default::default()
        };
        self.media(WorkerCommand::SendData {
            room: self.sid(),
            packet: packet.encode_to_vec(),
            kind,
            to,
        });
        Ok(())
    }
}
