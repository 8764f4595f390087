//! IVF: a 32-byte header (`DKIF`, codec fourcc, size, timebase) and frames, each with a
//! 12-byte header (size, timestamp).

use std::time::Duration;

use super::{FileCodec, Frame, MediaFile};

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IVF file.
pub fn parse(data: &[u8]) -> Result<MediaFile, String> {
    if data.len() < 32 || &data[..4] != b"DKIF" {
        return Err("not an IVF file".into());
    }
    let codec = match &data[8..12] {
        b"VP80" => FileCodec::Vp8,
        b"VP90" => FileCodec::Vp9,
        b"AV01" => FileCodec::Av1,
        other => {
            return Err(format!(
                "unsupported IVF codec {:?}",
                String::from_utf8_lossy(other)
            ));
        }
    };
    let header_len = (u16le(data, 6) as usize).max(32);
    let (width, height) = (u16le(data, 12) as u32, u16le(data, 14) as u32);
    let rate = u32le(data, 16).max(1) as u64;
    let scale = u32le(data, 20).max(1) as u64;
    let mut frames = Vec::new();
    let mut pts = Vec::new();
    let mut at = header_len;
    while at < data.len() {
        if at + 12 > data.len() {
            return Err("truncated IVF frame header".into());
        }
        let size = u32le(data, at) as usize;
        let ts = u64::from_le_bytes(data[at + 4..at + 12].try_into().unwrap_or([0; 8]));
        at += 12;
        if at + size > data.len() {
            return Err("truncated IVF frame".into());
        }
        frames.push(data[at..at + size].to_vec());
        pts.push(ts);
        at += size;
    }
    // A frame lasts until the next one; the last one as long as the one before (or 1/30 s).
    let tick = Duration::from_secs_f64(scale as f64 / rate as f64);
    let mut out = Vec::with_capacity(frames.len());
    for (i, data) in frames.into_iter().enumerate() {
        let d = match (pts.get(i), pts.get(i + 1)) {
            (Some(a), Some(b)) if b > a => tick * (b - a) as u32,
            _ => out
                .last()
                .map(|f: &Frame| f.duration)
                .unwrap_or(Duration::from_millis(33)),
        };
        out.push(Frame {
            data,
            duration: d.clamp(Duration::from_millis(1), Duration::from_secs(1)),
        });
    }
    Ok(MediaFile {
        codec,
        size: Some((width, height)),
        frames: out,
    })
}

/// Writes frames as IVF with a 90 kHz timebase.
pub struct IvfWriter<W: std::io::Write> {
    out: W,
    frames: u32,
}

impl<W: std::io::Write + std::io::Seek> IvfWriter<W> {
    /// Writes the header; the frame count is filled in by [`Self::finish`].
    pub fn new(mut out: W, codec: FileCodec, width: u16, height: u16) -> std::io::Result<Self> {
        let fourcc: &[u8; 4] = match codec {
            FileCodec::Vp9 => b"VP90",
            FileCodec::Av1 => b"AV01",
            _ => b"VP80",
        };
        let mut h = Vec::with_capacity(32);
        h.extend_from_slice(b"DKIF");
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&32u16.to_le_bytes());
        h.extend_from_slice(fourcc);
        h.extend_from_slice(&width.to_le_bytes());
        h.extend_from_slice(&height.to_le_bytes());
        h.extend_from_slice(&90_000u32.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        out.write_all(&h)?;
        Ok(Self { out, frames: 0 })
    }

    /// Appends one frame at `pts` (90 kHz).
    pub fn write(&mut self, pts: u64, frame: &[u8]) -> std::io::Result<()> {
        self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
        self.out.write_all(&pts.to_le_bytes())?;
        self.out.write_all(frame)?;
        self.frames += 1;
        Ok(())
    }

    /// Fills in the frame count and flushes.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.seek(std::io::SeekFrom::Start(24))?;
        self.out.write_all(&self.frames.to_le_bytes())?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = IvfWriter::new(&mut buf, FileCodec::Vp9, 320, 240).unwrap();
        w.write(0, b"one").unwrap();
        w.write(3000, b"two!").unwrap();
        w.write(6000, b"3").unwrap();
        w.finish().unwrap();
        let f = parse(buf.get_ref()).unwrap();
        assert_eq!(f.codec, FileCodec::Vp9);
        assert_eq!(f.size, Some((320, 240)));
        assert_eq!(f.frames.len(), 3);
        assert_eq!(f.frames[1].data, b"two!");
        assert_eq!(f.frames[0].duration, Duration::from_micros(33_333));
        assert!(parse(&buf.get_ref()[..40]).is_err(), "truncated");
        assert!(parse(b"DKIF not really").is_err());
    }
}
