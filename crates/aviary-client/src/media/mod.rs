//! Media file formats the client reads (to publish) and writes (to record): IVF (VP8, VP9,
//! AV1), Ogg Opus, and H.264 Annex-B.

pub mod h264;
pub mod ivf;
pub mod ogg;

use std::path::Path;
use std::time::Duration;

/// A codec the client can publish or record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileCodec {
    /// VP8 in IVF.
    Vp8,
    /// VP9 in IVF.
    Vp9,
    /// AV1 in IVF.
    Av1,
    /// H.264 Annex-B.
    H264,
    /// Opus in Ogg.
    Opus,
}

impl FileCodec {
    /// The LiveKit MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            FileCodec::Vp8 => "video/VP8",
            FileCodec::Vp9 => "video/VP9",
            FileCodec::Av1 => "video/AV1",
            FileCodec::H264 => "video/H264",
            FileCodec::Opus => "audio/opus",
        }
    }

    /// Audio or video.
    pub fn is_audio(self) -> bool {
        self == FileCodec::Opus
    }
}

/// One frame read from a file: its data and its duration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The encoded frame (an Opus packet, a VP8/VP9/AV1 frame, an H.264 access unit).
    pub data: Vec<u8>,
    /// How long it lasts.
    pub duration: Duration,
}

/// A whole media file in memory, ready to be sent in a loop.
#[derive(Clone, Debug)]
pub struct MediaFile {
    /// Its codec.
    pub codec: FileCodec,
    /// Video size, when known.
    pub size: Option<(u32, u32)>,
    /// The frames, in order.
    pub frames: Vec<Frame>,
}

/// Why a file cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not readable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not in a format we know, or damaged.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a media file, choosing the format by its contents (IVF, Ogg) or extension
/// (`.h264`, `.264`).
pub fn read_file(path: &Path) -> Result<MediaFile, ReadError> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| ReadError::Io {
        path: name.clone(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    parse(&name, &data, &ext)
}

/// Parses media read from `name` (for messages) with extension `ext` (lowercase).
pub fn parse(name: &str, data: &[u8], ext: &str) -> Result<MediaFile, ReadError> {
    let format = |reason: String| ReadError::Format {
        path: name.to_string(),
        reason,
    };
    let file = if data.starts_with(b"DKIF") {
        ivf::parse(data).map_err(format)?
    } else if data.starts_with(b"OggS") {
        ogg::parse_opus(data).map_err(format)?
    } else if ext == "h264" || ext == "264" {
        h264::parse(data).map_err(format)?
    } else {
        return Err(format(
            "unsupported file: expected IVF (VP8, VP9, AV1), Ogg Opus or H.264 Annex-B (.h264)"
                .into(),
        ));
    };
    if file.frames.is_empty() {
        return Err(format("no frames".into()));
    }
    Ok(file)
}

/// The demo media `aviary join --publish-demo` publishes, built into the binary
/// (`scripts/make-demo-media.sh` makes it): a 440 Hz tone and a moving test pattern, each
/// named for its track.
pub fn demo() -> Result<Vec<(std::path::PathBuf, MediaFile)>, ReadError> {
    const TONE: &[u8] = include_bytes!("../../assets/demo-tone.ogg");
    const PATTERN: &[u8] = include_bytes!("../../assets/demo-pattern.ivf");
    Ok(vec![
        ("demo-tone".into(), parse("demo-tone", TONE, "ogg")?),
        (
            "demo-pattern".into(),
            parse("demo-pattern", PATTERN, "ivf")?,
        ),
    ])
}

#[cfg(test)]
mod demo_tests {
    #[test]
    fn the_demo_media_parses_and_loops_in_seconds() {
        let demo = super::demo().expect("built-in demo media");
        assert_eq!(demo.len(), 2);
        for (name, file) in &demo {
            let total: std::time::Duration = file.frames.iter().map(|f| f.duration).sum();
            assert!(
                (3.5..=4.5).contains(&total.as_secs_f64()),
                "{} lasts {total:?}",
                name.display()
            );
        }
        assert!(demo[0].1.codec.is_audio());
        assert_eq!(demo[1].1.size, Some((320, 240)));
    }
}
