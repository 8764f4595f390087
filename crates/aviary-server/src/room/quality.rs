//! Which simulcast layer a subscriber's `UpdateTrackSettings` asks for.
//!
//! The media core numbers a producer's layers from 0 (lowest); LiveKit describes them in
//! `TrackInfo.layers` by quality and size. A subscriber names either a quality or the size
//! it renders at (adaptive stream); the answer is the highest layer it may get.

use livekit_protocol as proto;

/// A layer a little smaller than asked is still good enough (as upstream does), so that
/// a 350-pixel-high element does not pull the 720p layer for want of 10 pixels.
const SIZE_TOLERANCE: f32 = 0.9;

/// The track's layers from lowest to highest quality; that order is the media core's
/// layer numbering.
fn layers(track: &proto::TrackInfo) -> Vec<&proto::VideoLayer> {
    // Current clients describe layers per codec; older ones in the deprecated field.
    #[allow(deprecated)]
    let described = match track.codecs.iter().find(|c| !c.layers.is_empty()) {
        Some(codec) => &codec.layers,
        None => &track.layers,
    };
    let mut layers: Vec<&proto::VideoLayer> = described.iter().collect();
    layers.sort_by_key(|l| l.quality);
    layers
}

/// The highest layer index `req` allows for `track`; `usize::MAX` means no cap.
pub fn max_layer(track: &proto::TrackInfo, req: &proto::UpdateTrackSettings) -> usize {
    let layers = layers(track);
    if layers.len() < 2 {
        return usize::MAX;
    }
    if req.width > 0 || req.height > 0 {
        // Portrait video is judged by its width, landscape by its height.
        let portrait = track.width < track.height;
        let wanted = if portrait { req.width } else { req.height } as f32 * SIZE_TOLERANCE;
        let size = |l: &proto::VideoLayer| if portrait { l.width } else { l.height };
        return layers
            .iter()
            .position(|l| size(l) as f32 >= wanted)
            .unwrap_or(layers.len() - 1);
    }
    layers
        .iter()
        .rposition(|l| l.quality <= req.quality)
        .unwrap_or(0)
}

/// The `SubscribedQualityUpdate` for a publisher when layers up to `max_layer` (or none)
/// are received: each of the track's qualities, enabled or not.
pub fn subscribed_qualities(
    track: &proto::TrackInfo,
    max_layer: Option<usize>,
) -> proto::SubscribedQualityUpdate {
    let described: Vec<i32> = layers(track).iter().map(|l| l.quality).collect();
    let qualities: Vec<i32> = if described.is_empty() {
        use proto::VideoQuality::{High, Low, Medium};
        vec![Low as i32, Medium as i32, High as i32]
    } else {
        described
    };
    let subscribed: Vec<proto::SubscribedQuality> = qualities
        .iter()
        .enumerate()
        .map(|(i, &quality)| proto::SubscribedQuality {
            quality,
            enabled: max_layer.is_some_and(|max| i <= max),
        })
        .collect();
    let codec = track
        .mime_type
        .split_once('/')
        .map_or(track.mime_type.as_str(), |(_, c)| c)
        .to_ascii_lowercase();
    #[allow(deprecated)]
    proto::SubscribedQualityUpdate {
        track_sid: track.sid.clone(),
        subscribed_qualities: subscribed.clone(),
        subscribed_codecs: vec![proto::SubscribedCodec {
            codec,
            qualities: subscribed,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::VideoQuality::{High, Low, Medium};

    fn track() -> proto::TrackInfo {
        let layer = |quality: proto::VideoQuality, width, height| proto::VideoLayer {
            quality: quality as i32,
            width,
            height,
            ..Default::default()
        };
        #[allow(deprecated)]
        proto::TrackInfo {
            width: 1280,
            height: 720,
            // In any order, as clients send them.
            layers: vec![
                layer(High, 1280, 720),
                layer(Low, 320, 180),
                layer(Medium, 640, 360),
            ],
            ..Default::default()
        }
    }

    fn settings(
        quality: proto::VideoQuality,
        width: u32,
        height: u32,
    ) -> proto::UpdateTrackSettings {
        proto::UpdateTrackSettings {
            quality: quality as i32,
            width,
            height,
            ..Default::default()
        }
    }

    #[test]
    fn quality_picks_the_layer() {
        assert_eq!(max_layer(&track(), &settings(Low, 0, 0)), 0);
        assert_eq!(max_layer(&track(), &settings(Medium, 0, 0)), 1);
        assert_eq!(max_layer(&track(), &settings(High, 0, 0)), 2);
    }

    #[test]
    fn size_picks_the_smallest_layer_that_covers_it() {
        assert_eq!(max_layer(&track(), &settings(High, 160, 90)), 0);
        assert_eq!(
            max_layer(&track(), &settings(High, 640, 350)),
            1,
            "within tolerance"
        );
        assert_eq!(max_layer(&track(), &settings(High, 740, 420)), 2);
        assert_eq!(
            max_layer(&track(), &settings(Low, 4000, 3000)),
            2,
            "size wins"
        );
    }

    #[test]
    fn subscribed_qualities_enable_the_layers_up_to_the_wanted_one() {
        let mut t = track();
        t.sid = "TR_x".into();
        t.mime_type = "video/VP8".into();
        let enabled = |u: &proto::SubscribedQualityUpdate| -> Vec<bool> {
            u.subscribed_codecs[0]
                .qualities
                .iter()
                .map(|q| q.enabled)
                .collect()
        };
        let some = subscribed_qualities(&t, Some(1));
        assert_eq!(some.track_sid, "TR_x");
        assert_eq!(some.subscribed_codecs[0].codec, "vp8");
        let order: Vec<i32> = some.subscribed_codecs[0]
            .qualities
            .iter()
            .map(|q| q.quality)
            .collect();
        assert_eq!(order, [Low as i32, Medium as i32, High as i32]);
        assert_eq!(enabled(&some), [true, true, false]);
        assert_eq!(
            enabled(&subscribed_qualities(&t, None)),
            [false, false, false]
        );
        assert_eq!(
            enabled(&subscribed_qualities(&t, Some(9))),
            [true, true, true]
        );
    }

    #[test]
    #[allow(deprecated)]
    fn a_single_layer_track_is_not_capped() {
        let mut t = track();
        t.layers.truncate(1);
        assert_eq!(max_layer(&t, &settings(Low, 0, 0)), usize::MAX);
    }
}
