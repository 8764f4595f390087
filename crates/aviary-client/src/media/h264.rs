//! H.264 Annex-B: NAL units behind start codes, grouped into access units (one per frame).

use std::time::Duration;

use super::{FileCodec, Frame, MediaFile};

/// Frame rate assumed for raw H.264 files, which carry no timing.
const FPS: u32 = 30;

/// Splits Annex-B data into NAL units (without start codes).
pub fn nal_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&n| n - 3);
        // A 4-byte start code leaves a zero at the end of the previous unit.
        while end > s && data[end - 1] == 0 && k + 1 < starts.len() {
            end -= 1;
        }
        if end > s {
            out.push(&data[s..end]);
        }
    }
    out
}

/// Parses an Annex-B stream into access units: a new one starts at an access unit
/// delimiter, at parameter sets or SEI after a slice, or at a slice whose
/// `first_mb_in_slice` is 0.
pub fn parse(data: &[u8]) -> Result<MediaFile, String> {
    let nals = nal_units(data);
    if nals.is_empty() {
        return Err("no H.264 start codes found".into());
    }
    let mut units: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut has_slice = false;
    for nal in nals {
        let kind = nal[0] & 0x1f;
        let starts_new = match kind {
            // SEI, SPS, PPS, access unit delimiter
            6..=9 => has_slice,
            1 | 5 => has_slice && nal.get(1).is_some_and(|b| b & 0x80 != 0),
            _ => false,
        };
        if starts_new {
            units.push(std::mem::take(&mut current));
            has_slice = false;
        }
        current.extend_from_slice(&[0, 0, 0, 1]);
        current.extend_from_slice(nal);
        if kind == 1 || kind == 5 {
            has_slice = true;
        }
    }
    if has_slice {
        units.push(current);
    }
    if units.is_empty() {
        return Err("no H.264 slices found".into());
    }
    Ok(MediaFile {
        codec: FileCodec::H264,
        size: None,
        frames: units
            .into_iter()
            .map(|data| Frame {
                data,
                duration: Duration::from_secs(1) / FPS,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_nal_units_into_frames() {
        let mut s = Vec::new();
        for nal in [
            &[0x67, 1, 2][..], // SPS
            &[0x68, 3],        // PPS
            &[0x65, 0x88, 9],  // IDR slice, first_mb 0
            &[0x65, 0x05, 9],  // IDR slice, first_mb != 0 (same frame)
            &[0x41, 0x9a, 7],  // P slice, first_mb 0: new frame
            &[0x41, 0x9a, 8],  // next frame
        ] {
            s.extend_from_slice(&[0, 0, 0, 1]);
            s.extend_from_slice(nal);
        }
        let f = parse(&s).unwrap();
        assert_eq!(f.frames.len(), 3);
        assert_eq!(nal_units(&f.frames[0].data).len(), 4);
        assert!(parse(b"no start codes").is_err());
    }
}
