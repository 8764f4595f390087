//! Ogg Opus (RFC 7845): pages of lacing-encoded packets; the first two packets are the
//! OpusHead and OpusTags headers.

use std::time::Duration;

use super::{FileCodec, Frame, MediaFile};

/// The duration of an Opus packet, from its TOC byte (RFC 6716 §3.1).
pub fn opus_packet_duration(packet: &[u8]) -> Option<Duration> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame_us: u64 = match config {
        0..=11 => [10_000, 20_000, 40_000, 60_000][(config % 4) as usize],
        12..=15 => [10_000, 20_000][(config % 2) as usize],
        _ => [2_500, 5_000, 10_000, 20_000][(config % 4) as usize],
    };
    let frames: u64 = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => (*packet.get(1)? & 0x3f) as u64,
    };
    Some(Duration::from_micros(frame_us * frames))
}

/// Splits an Ogg stream into packets (of its first logical stream).
fn packets(data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut serial = None;
    while at < data.len() {
        if data.len() < at + 27 || &data[at..at + 4] != b"OggS" {
            return Err("damaged Ogg page".into());
        }
        let page_serial = u32::from_le_bytes(data[at + 14..at + 18].try_into().unwrap_or([0; 4]));
        let segments = data[at + 26] as usize;
        let table_end = at + 27 + segments;
        if data.len() < table_end {
            return Err("truncated Ogg page".into());
        }
        let lacing = &data[at + 27..table_end];
        let body_len: usize = lacing.iter().map(|&l| l as usize).sum();
        if data.len() < table_end + body_len {
            return Err("truncated Ogg page".into());
        }
        let mine = *serial.get_or_insert(page_serial) == page_serial;
        let mut body = table_end;
        for &l in lacing {
            if mine {
                partial.extend_from_slice(&data[body..body + l as usize]);
                if l < 255 {
                    out.push(std::mem::take(&mut partial));
                }
            }
            body += l as usize;
        }
        at = table_end + body_len;
    }
    Ok(out)
}

/// Parses an Ogg Opus file into packets with their durations.
pub fn parse_opus(data: &[u8]) -> Result<MediaFile, String> {
    let packets = packets(data)?;
    match packets.first() {
        Some(head) if head.starts_with(b"OpusHead") => {}
        _ => return Err("not an Ogg Opus file (no OpusHead)".into()),
    }
    let frames = packets
        .into_iter()
        .skip(2) // OpusHead, OpusTags
        .filter(|p| !p.is_empty())
        .map(|p| {
            let duration = opus_packet_duration(&p).unwrap_or(Duration::from_millis(20));
            Frame { data: p, duration }
        })
        .collect();
    Ok(MediaFile {
        codec: FileCodec::Opus,
        size: None,
        frames,
    })
}

/// The Ogg CRC-32 (polynomial 0x04c11db7, not reflected, initial 0).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Writes Opus packets as an Ogg Opus file, one packet per page.
pub struct OggOpusWriter<W: std::io::Write> {
    out: W,
    serial: u32,
    sequence: u32,
    granule: u64,
}

impl<W: std::io::Write> OggOpusWriter<W> {
    /// Writes the OpusHead and OpusTags pages (48 kHz, `channels` channels).
    pub fn new(out: W, channels: u8) -> std::io::Result<Self> {
        let mut w = Self {
            out,
            serial: 0x4176_6961, // "Avia"
            sequence: 0,
            granule: 0,
        };
        let mut head = b"OpusHead".to_vec();
        head.push(1);
        head.push(channels);
        head.extend_from_slice(&312u16.to_le_bytes()); // pre-skip, as libopus uses
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes());
        head.push(0);
        w.page(&head, 0, 0x02)?;
        let mut tags = b"OpusTags".to_vec();
        let vendor = b"aviary";
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor);
        tags.extend_from_slice(&0u32.to_le_bytes());
        w.page(&tags, 0, 0)?;
        Ok(w)
    }

    /// Appends one Opus packet.
    pub fn write(&mut self, packet: &[u8]) -> std::io::Result<()> {
        let samples = opus_packet_duration(packet)
            .map(|d| d.as_micros() as u64 * 48 / 1000)
            .unwrap_or(960);
        self.granule += samples;
        let granule = self.granule;
        self.page(packet, granule, 0)
    }

    /// Ends the stream with an empty last page.
    pub fn finish(mut self) -> std::io::Result<()> {
        let granule = self.granule;
        self.page(&[], granule, 0x04)?;
        self.out.flush()
    }

    fn page(&mut self, packet: &[u8], granule: u64, flags: u8) -> std::io::Result<()> {
        let mut lacing = vec![255u8; packet.len() / 255];
        lacing.push((packet.len() % 255) as u8);
        let mut page = Vec::with_capacity(27 + lacing.len() + packet.len());
        page.extend_from_slice(b"OggS");
        page.push(0);
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.sequence.to_le_bytes());
        page.extend_from_slice(&0u32.to_le_bytes());
        page.push(lacing.len() as u8);
        page.extend_from_slice(&lacing);
        page.extend_from_slice(packet);
        let crc = crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.sequence += 1;
        self.out.write_all(&page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_durations() {
        assert_eq!(
            opus_packet_duration(&[0xf8]),
            Some(Duration::from_millis(20))
        ); // CELT 20 ms
        assert_eq!(
            opus_packet_duration(&[0x08 | 1]),
            Some(Duration::from_millis(40))
        ); // SILK 20 ms ×2
        assert_eq!(
            opus_packet_duration(&[0xfb, 3]),
            Some(Duration::from_millis(60))
        );
        assert_eq!(opus_packet_duration(&[]), None);
    }

    #[test]
    fn round_trip_with_long_packets() {
        let mut buf = Vec::new();
        let mut w = OggOpusWriter::new(&mut buf, 1).unwrap();
        let long = vec![0xf8u8; 600]; // spans several lacing values
        w.write(&[0xf8, 1, 2, 3]).unwrap();
        w.write(&long).unwrap();
        w.finish().unwrap();
        let f = parse_opus(&buf).unwrap();
        assert_eq!(f.frames.len(), 2);
        assert_eq!(f.frames[1].data, long);
        assert_eq!(f.frames[0].duration, Duration::from_millis(20));
        assert!(parse_opus(b"OggS").is_err());
    }
}
