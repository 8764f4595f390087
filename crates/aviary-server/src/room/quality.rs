//! Which simulcast layer a subscriber's `UpdateTrackSettings` asks for.
//!
//! The media core numbers a producer's layers from 0 (lowest); LiveKit describes them in
//! `TrackInfo.layers` by quality and size. A subscriber names either a quality or the size
//! it renders at (adaptive stream); the answer is the highest layer it may get.

use livekit_protocol as proto;

/// A layer a little smaller than asked is still good enough (as upstream does), so that
/// a 350-pixel-high element does not pull the 720p layer for want of 10 pixels.
const SIZE_TOLERANCE: f32 = 0.9;

/// The highest layer index `req` allows for `track`; `usize::MAX` means no cap.
pub fn max_layer(track: &proto::TrackInfo, req: &proto::UpdateTrackSettings) -> usize {
    // Current clients describe layers per codec; older ones in the deprecated field.
    #[allow(deprecated)]
    let described = match track.codecs.iter().find(|c| !c.layers.is_empty()) {
        Some(codec) => &codec.layers,
        None => &track.layers,
    };
    let mut layers: Vec<&proto::VideoLayer> = described.iter().collect();
    if layers.len() < 2 {
        return usize::MAX;
    }
    layers.sort_by_key(|l| l.quality);
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
    #[allow(deprecated)]
    fn a_single_layer_track_is_not_capped() {
        let mut t = track();
        t.layers.truncate(1);
        assert_eq!(max_layer(&t, &settings(Low, 0, 0)), usize::MAX);
    }
}
