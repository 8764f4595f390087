//! Metadata: a participant's own name/metadata/attributes updates, RoomService's
//! UpdateParticipant (which also changes permissions) and the room's metadata.

use std::collections::HashMap;

use livekit_protocol as proto;
use livekit_protocol::signal_response::Message;

use super::ServiceError;
use super::core::RoomCore;
use super::limits::Limit;
use crate::config::LimitConfig;
use crate::ids::ParticipantSid;
use crate::worker::WorkerCommand;

impl RoomCore {
    /// A client's own metadata/name/attributes update (needs `canUpdateOwnMetadata`).
    pub fn update_own_metadata(
        &mut self,
        sid: &ParticipantSid,
        req: &proto::UpdateParticipantMetadata,
    ) -> Result<(), ServiceError> {
        let p = self
            .participant(sid.as_str())
            .ok_or_else(|| ServiceError::ParticipantNotFound(sid.to_string()))?;
        if !p
            .info
            .permission
            .as_ref()
            .is_some_and(|p| p.can_update_metadata)
        {
            return Err(ServiceError::PermissionDenied(
                "participant may not update its own metadata".into(),
            ));
        }
        let changed = match changed_info(
            &self.settings.limits,
            &p.info,
            &req.metadata,
            &req.name,
            &req.attributes,
        ) {
            Ok(c) => c,
            Err(e) => {
                self.limit_hit(sid.as_str(), Limit::Metadata, &e);
                return Err(e);
            }
        };
        if let Some((metadata, name, attributes)) = changed {
            self.update_info(sid.as_str(), |i| {
                i.metadata = metadata;
                i.name = name;
                i.attributes = attributes;
            });
        }
        Ok(())
    }

    /// RoomService.UpdateParticipant: metadata, name, attributes and permission. What a
    /// narrowed permission no longer allows stops at once, as upstream does: tracks it may
    /// not publish end, subscriptions it may not have end, data is no longer relayed.
    pub fn update_participant(
        &mut self,
        req: &proto::UpdateParticipantRequest,
    ) -> Result<proto::ParticipantInfo, ServiceError> {
        let p = self
            .by_identity(&req.identity)
            .ok_or_else(|| ServiceError::ParticipantNotFound(req.identity.clone()))?;
        let sid = p.sid();
        let changed = changed_info(
            &self.settings.limits,
            &p.info,
            &req.metadata,
            &req.name,
            &req.attributes,
        )?;
        let perm_changed = req
            .permission
            .as_ref()
            .is_some_and(|perm| p.info.permission.as_ref() != Some(perm));
        if changed.is_none() && !perm_changed {
            return Ok(p.info.clone());
        }
        let info = self
            .update_info(sid.as_str(), |i| {
                if let Some((metadata, name, attributes)) = changed {
                    i.metadata = metadata;
                    i.name = name;
                    i.attributes = attributes;
                }
                if let Some(perm) = &req.permission {
                    i.permission = Some(perm.clone());
                }
            })
            .ok_or_else(|| ServiceError::ParticipantNotFound(req.identity.clone()))?;
        if let Some(perm) = &req.permission {
            self.enforce_publish_permission(&sid);
            self.reconcile_subscriber(&sid);
            self.media(WorkerCommand::SetDataPermission {
                key: self.key(&sid),
                can_publish_data: perm.can_publish_data,
            });
        }
        Ok(info)
    }

    /// RoomService.UpdateRoomMetadata.
    pub fn update_room_metadata(&mut self, metadata: &str) -> Result<proto::Room, ServiceError> {
        check_metadata(&self.settings.limits, metadata, &HashMap::new())?;
        self.info.metadata = metadata.to_string();
        let update = Message::RoomUpdate(proto::RoomUpdate {
            room: Some(self.info.clone()),
        });
        let sids: Vec<ParticipantSid> = self.participants.iter().map(|p| p.sid()).collect();
        for sid in sids {
            self.send(sid.as_str(), update.clone());
        }
        Ok(self.info.clone())
    }
}

/// Checks metadata and attributes against `limit.*`.
pub(crate) fn check_metadata(
    limits: &LimitConfig,
    metadata: &str,
    attributes: &HashMap<String, String>,
) -> Result<(), ServiceError> {
    let max = limits.max_metadata_size as usize;
    if max > 0 && metadata.len() > max {
        return Err(ServiceError::InvalidArgument(format!(
            "metadata is {} bytes, over the limit of {max} (limit.max_metadata_size)",
            metadata.len()
        )));
    }
    let max = limits.max_attributes_size as usize;
    let size: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    if max > 0 && size > max {
        return Err(ServiceError::InvalidArgument(format!(
            "attributes are {size} bytes, over the limit of {max} (limit.max_attributes_size)"
        )));
    }
    Ok(())
}

/// What an update of metadata, name and attributes makes of `info`, checked against
/// `limit.*` (attributes as they are after the update, not only the update's own size):
/// `None` when nothing changes.
#[allow(clippy::type_complexity)]
fn changed_info(
    limits: &LimitConfig,
    info: &proto::ParticipantInfo,
    metadata: &str,
    name: &str,
    attributes: &HashMap<String, String>,
) -> Result<Option<(String, String, HashMap<String, String>)>, ServiceError> {
    let max_name = limits.max_participant_name_length as usize;
    if max_name > 0 && name.len() > max_name {
        return Err(ServiceError::LimitExceeded(format!(
            "name is {} bytes, over the limit of {max_name} (limit.max_participant_name_length)",
            name.len()
        )));
    }
    let mut merged = info.attributes.clone();
    merge_attributes(&mut merged, attributes);
    check_metadata(limits, metadata, &merged)?;
    let metadata = if metadata.is_empty() {
        &info.metadata
    } else {
        metadata
    };
    let name = if name.is_empty() { &info.name } else { name };
    if *metadata == info.metadata && *name == info.name && merged == info.attributes {
        return Ok(None);
    }
    Ok(Some((metadata.to_string(), name.to_string(), merged)))
}

/// Applies an attribute update: a key with an empty value is deleted.
fn merge_attributes(into: &mut HashMap<String, String>, update: &HashMap<String, String>) {
    for (k, v) in update {
        if v.is_empty() {
            into.remove(k);
        } else {
            into.insert(k.clone(), v.clone());
        }
    }
}
