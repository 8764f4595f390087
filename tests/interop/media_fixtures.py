"""Media files for the tests of `aviary join` (test_cli_join.py), made with
Debian's ffmpeg, and the ffprobe/ffmpeg checks that read media files back:
the fixtures themselves and what `aviary join --subscribe-to DIR` records.

`generate(directory)` writes, in about a second on two cores:

* red-vp8.ivf, red-vp9.ivf, red-av1.ivf: 320x240, solid (200, 40, 40),
  30 fps, 5 s, a key frame every second, no hidden (alt-ref) frames, encoded
  for real time (libvpx, libvpx-vp9, libaom-av1);
* red.h264: the same picture as H.264 Annex-B (libx264, constrained baseline
  level 3.1 as WebRTC's 42e01f, no B-frames, SPS and PPS before every IDR);
* tone.ogg: a 440 Hz sine (amplitude 0.5), 48 kHz mono, 5 s, Ogg Opus
  (libopus);
* tone.wav: the same sine as 16-bit PCM WAV (a real media file `aviary join`
  does not take, and a check of the WAV reader that needs no Opus).

`verify(media)` checks every file is what it claims (ffprobe, plus decoding
it: colour of every frame, frequency of the tone, the IVF and Annex-B
structure) and raises AssertionError saying what is wrong otherwise.

Every ffmpeg/ffprobe run has a timeout.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from harness import FRAME_SAMPLES, SAMPLE_RATE, ToneReport, analyse_tone

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"
FFMPEG_TIMEOUT = 60.0  # seconds, for any one ffmpeg or ffprobe run

VIDEO_W, VIDEO_H, VIDEO_FPS = 320, 240, 30
VIDEO_RGB = (200, 40, 40)
CLIP_SECONDS = 5
KEYFRAME_INTERVAL = 30  # frames: one key frame a second
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.5
# ffmpeg's colour conversion (BT.601, limited range) brings a solid colour
# back within a few steps per channel.
FIXTURE_COLOUR_TOLERANCE = 10


@dataclass(frozen=True)
class VideoKind:
    """One video codec as the tests see it."""

    key: str  # "vp8", ...
    file_name: str
    encoder: str  # the ffmpeg encoder that made the fixture
    probe_codec: str  # ffprobe's codec_name
    mime: str  # LiveKit's TrackInfo.mime_type / what `aviary join` prints
    ivf_fourcc: Optional[bytes]  # None: not an IVF file


VIDEO_KINDS: dict[str, VideoKind] = {
    "vp8": VideoKind("vp8", "red-vp8.ivf", "libvpx", "vp8", "video/VP8", b"VP80"),
    "vp9": VideoKind("vp9", "red-vp9.ivf", "libvpx-vp9", "vp9", "video/VP9", b"VP90"),
    "av1": VideoKind("av1", "red-av1.ivf", "libaom-av1", "av1", "video/AV1", b"AV01"),
    "h264": VideoKind("h264", "red.h264", "libx264", "h264", "video/H264", None),
}
OPUS_MIME = "audio/opus"


@dataclass
class MediaFiles:
    directory: Path
    video: dict[str, Path]  # VIDEO_KINDS key -> file
    tone_ogg: Path
    tone_wav: Path
    generation_seconds: float = 0.0
    ffmpeg_version: str = ""
    commands: list[list[str]] = field(default_factory=list)

    @property
    def vp8(self) -> Path:
        return self.video["vp8"]


# --------------------------------------------------------------------------
# running ffmpeg and ffprobe


def require_ffmpeg() -> None:
    missing = [tool for tool in (FFMPEG, FFPROBE) if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found: install Debian's ffmpeg "
            "(apt-get install ffmpeg; .ci/run does this)"
        )


def run_tool(argv: list[str], *, timeout: float = FFMPEG_TIMEOUT, text: bool = True) -> subprocess.CompletedProcess:
    """Run ffmpeg/ffprobe, bounded; fail with its stderr if it fails."""
    try:
        out = subprocess.run(argv, capture_output=True, text=text, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{argv[0]} did not finish within {timeout}s: {' '.join(argv)}") from None
    if out.returncode != 0:
        err = out.stderr if text else out.stderr.decode(errors="replace")
        raise AssertionError(f"{' '.join(argv)} failed ({out.returncode}):\n{err[-2000:]}")
    return out


def ffmpeg_version() -> str:
    out = run_tool([FFMPEG, "-version"])
    return out.stdout.splitlines()[0] if out.stdout else "?"


# --------------------------------------------------------------------------
# making the fixtures

# What follows the video source, per codec (VIDEO_KINDS key): encoder, its
# settings and the container.
_VIDEO_ENCODERS: dict[str, list[str]] = {
    # Real-time libvpx: no look-ahead, so no alt-ref (hidden) frames; each IVF
    # frame is one shown picture. -qmax 30 keeps the colour of VP8's first
    # inter frames within a few steps (11 off without it).
    "vp8": [
        "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k", "-qmax", "30",
        "-g", str(KEYFRAME_INTERVAL), "-lag-in-frames", "0", "-auto-alt-ref", "0",
        "-f", "ivf",
    ],
    "vp9": [
        "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k", "-qmax", "30",
        "-g", str(KEYFRAME_INTERVAL), "-lag-in-frames", "0", "-auto-alt-ref", "0",
        "-f", "ivf",
    ],
    # libaom in its real-time mode (low delay, fast). Debian's ffmpeg also has
    # libsvtav1 and librav1e; SVT-AV1 would use a random-access structure
    # (mini-GOPs of 16 with hidden frames), which suits no real-time sender.
    "av1": [
        "-c:v", "libaom-av1", "-usage", "realtime", "-cpu-used", "8", "-b:v", "300k",
        "-g", str(KEYFRAME_INTERVAL), "-lag-in-frames", "0",
        "-f", "ivf",
    ],
    # Constrained baseline level 3.1 (42e01f, what WebRTC offers), no
    # B-frames, an IDR every second; libx264 repeats SPS and PPS before every
    # IDR in a raw stream.
    "h264": [
        "-c:v", "libx264", "-profile:v", "baseline", "-level", "3.1", "-preset", "veryfast",
        "-bf", "0", "-g", str(KEYFRAME_INTERVAL), "-keyint_min", str(KEYFRAME_INTERVAL),
        "-sc_threshold", "0", "-bsf:v", "h264_mp4toannexb",
        "-f", "h264",
    ],
}

_AUDIO_ENCODERS: dict[str, list[str]] = {
    "ogg": ["-c:a", "libopus", "-b:a", "64k", "-f", "ogg"],
    "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
}


def ffmpeg_argv(args: list[str], out: Path) -> list[str]:
    return [FFMPEG, "-hide_banner", "-nostdin", "-y", "-v", "error", *args, str(out)]


def encode_video(
    out: Path,
    codec: str,
    *,
    rgb: tuple[int, int, int] = VIDEO_RGB,
    size: tuple[int, int] = (VIDEO_W, VIDEO_H),
    seconds: float = CLIP_SECONDS,
) -> list[str]:
    """A solid-colour clip at VIDEO_FPS; returns the ffmpeg command it ran."""
    source = [
        "-f", "lavfi",
        "-i", "color=c=0x{:02X}{:02X}{:02X}:s={}x{}:r={}:d={:g}".format(*rgb, *size, VIDEO_FPS, seconds),
        "-pix_fmt", "yuv420p",
    ]
    argv = ffmpeg_argv(source + _VIDEO_ENCODERS[codec], out)
    run_tool(argv)
    return argv


def encode_tone(
    out: Path, container: str, *, frequency: float = TONE_HZ, seconds: float = CLIP_SECONDS
) -> list[str]:
    """A sine of amplitude TONE_AMPLITUDE, 48 kHz mono, as Ogg Opus ("ogg") or
    PCM WAV ("wav"); returns the ffmpeg command it ran."""
    source = [
        "-f", "lavfi",
        "-i", f"aevalsrc={TONE_AMPLITUDE}*sin(2*PI*{frequency:g}*t):s={SAMPLE_RATE}:c=mono:d={seconds:g}",
        "-ar", str(SAMPLE_RATE), "-ac", "1",
    ]
    argv = ffmpeg_argv(source + _AUDIO_ENCODERS[container], out)
    run_tool(argv)
    return argv


def generate(directory: Path) -> MediaFiles:
    """Write the fixtures into `directory` (which must exist)."""
    require_ffmpeg()
    started = time.monotonic()
    media = MediaFiles(
        directory=directory,
        video={key: directory / kind.file_name for key, kind in VIDEO_KINDS.items()},
        tone_ogg=directory / "tone.ogg",
        tone_wav=directory / "tone.wav",
    )
    for key, path in media.video.items():
        media.commands.append(encode_video(path, key))
    media.commands.append(encode_tone(media.tone_ogg, "ogg"))
    media.commands.append(encode_tone(media.tone_wav, "wav"))
    media.generation_seconds = time.monotonic() - started
    media.ffmpeg_version = ffmpeg_version()
    return media


# --------------------------------------------------------------------------
# reading media files back


@dataclass
class Probe:
    """What ffprobe says about the first stream of a file."""

    format_name: str
    codec: str
    width: int = 0
    height: int = 0
    pix_fmt: str = ""
    profile: str = ""
    frame_rate: str = ""
    frames: int = 0  # counted by decoding (-count_frames)
    sample_rate: int = 0
    channels: int = 0
    duration: float = 0.0


def probe(path: Path) -> Probe:
    out = run_tool(
        [
            FFPROBE, "-v", "error", "-count_frames",
            "-show_entries",
            "format=format_name,duration:stream=codec_name,profile,width,height,pix_fmt,"
            "r_frame_rate,nb_read_frames,sample_rate,channels",
            "-of", "json", str(path),
        ]
    )
    data = json.loads(out.stdout)
    streams = data.get("streams") or []
    if not streams:
        raise AssertionError(f"ffprobe finds no stream in {path}: {out.stdout.strip()}")
    s, fmt = streams[0], data.get("format", {})

    def num(value: object, kind=int):
        try:
            return kind(value)
        except (TypeError, ValueError):
            return kind(0)

    return Probe(
        format_name=fmt.get("format_name", ""),
        codec=s.get("codec_name", ""),
        width=num(s.get("width")),
        height=num(s.get("height")),
        pix_fmt=s.get("pix_fmt", ""),
        profile=str(s.get("profile", "")),
        frame_rate=s.get("r_frame_rate", ""),
        frames=num(s.get("nb_read_frames")),
        sample_rate=num(s.get("sample_rate")),
        channels=num(s.get("channels")),
        duration=num(fmt.get("duration"), float),
    )


@dataclass
class DecodedVideo:
    """Every frame ffmpeg decodes from a file: its size and centre pixel (RGB)."""

    sizes: list[tuple[int, int]]
    centres: list[tuple[int, int, int]]
    key_frames: int

    @property
    def frames(self) -> int:
        return len(self.sizes)

    def off_colour(self, rgb: tuple[int, int, int], tolerance: int) -> list[tuple[int, tuple[int, int, int]]]:
        """(index, centre) of the frames whose centre pixel is not within
        `tolerance` of `rgb` in each channel."""
        return [
            (i, c) for i, c in enumerate(self.centres)
            if any(abs(int(g) - int(w)) > tolerance for g, w in zip(c, rgb))
        ]

    def describe(self) -> str:
        sizes = sorted(set(self.sizes))
        return (
            f"{self.frames} decoded frames ({self.key_frames} key frames), sizes {sizes}, "
            f"centre pixels {self.centres[:3]}{'...' if self.frames > 3 else ''}"
        )


def decode_video(path: Path) -> DecodedVideo:
    """Decode every frame of `path` with ffmpeg: sizes and key frames from
    ffprobe -show_frames, the centre pixel (x = w/2, y = h/2, as centre_rgba)
    of each frame from ffmpeg converting to rgb24 and cropping to it."""
    frames = run_tool(
        [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries",
         "frame=width,height,key_frame", "-of", "json", str(path)]
    )
    info = json.loads(frames.stdout).get("frames", [])
    sizes = [(int(f.get("width", 0)), int(f.get("height", 0))) for f in info]
    keys = sum(1 for f in info if int(f.get("key_frame", 0)) == 1)
    # crop to 2x2 at the centre after the conversion to RGB (no chroma
    # subsampling there) and keep one pixel of each frame; passthrough: no
    # frame duplicated or dropped for a constant output rate
    raw = run_tool(
        [FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path),
         "-vf", "format=rgb24,crop=2:2:iw/2:ih/2", "-fps_mode", "passthrough",
         "-f", "rawvideo", "-"],
        text=False,
    ).stdout
    per_frame = 2 * 2 * 3
    centres = [tuple(raw[i : i + 3]) for i in range(0, len(raw) - per_frame + 1, per_frame)]
    if len(centres) != len(sizes):
        raise AssertionError(
            f"{path}: ffprobe shows {len(sizes)} frames but ffmpeg decoded {len(centres)}"
        )
    return DecodedVideo(sizes, centres, keys)  # type: ignore[arg-type]


def packet_times(path: Path) -> list[float]:
    """The presentation time (seconds) of every packet of the first stream,
    from the container's own timestamps (IVF: the frame headers' pts in the
    header's time base; Ogg: granule positions)."""
    out = run_tool(
        [FFPROBE, "-v", "error", "-select_streams", "0", "-show_entries", "packet=pts_time",
         "-of", "json", str(path)]
    )
    packets = json.loads(out.stdout).get("packets", [])
    return [float(p["pts_time"]) for p in packets if p.get("pts_time") not in (None, "N/A")]


def decode_i420_frame(path: Path, index: int = 0) -> bytes:
    """Frame `index` of a video file as raw I420 (yuv420p), as a decoder hands it to libwebrtc."""
    raw = run_tool(
        [FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path),
         "-vf", f"select=eq(n\\,{index})", "-frames:v", "1", "-fps_mode", "passthrough",
         "-pix_fmt", "yuv420p", "-f", "rawvideo", "-"],
        text=False,
    ).stdout
    return raw


def to_wav(path: Path, wav: Path) -> Path:
    """Decode any audio file to 16-bit 48 kHz mono WAV."""
    run_tool(
        [FFMPEG, "-hide_banner", "-nostdin", "-y", "-v", "error", "-i", str(path),
         "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "wav", str(wav)]
    )
    return wav


def read_wav(wav: Path) -> np.ndarray:
    """The samples of a 16-bit mono WAV file at SAMPLE_RATE, as floats."""
    with wave.open(str(wav), "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SAMPLE_RATE):
            raise AssertionError(
                f"{wav}: {w.getnchannels()} channels, {8 * w.getsampwidth()} bits, "
                f"{w.getframerate()} Hz; want mono 16-bit {SAMPLE_RATE} Hz"
            )
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def tone_report(samples: np.ndarray) -> ToneReport:
    """The harness's tone analysis over 10 ms frames of `samples`."""
    frames = [samples[i : i + FRAME_SAMPLES] for i in range(0, len(samples) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    return analyse_tone(frames)


def audio_tone(path: Path, scratch: Path) -> ToneReport:
    """Decode an audio file (ffmpeg to WAV in `scratch`) and analyse its tone."""
    return tone_report(read_wav(to_wav(path, scratch / (path.name + ".wav"))))


# -- container structure


def ivf_header(path: Path) -> dict[str, object]:
    """The 32-byte IVF file header: fourcc, width, height, timebase, frame count."""
    head = path.read_bytes()[:32]
    if len(head) < 32 or head[:4] != b"DKIF":
        raise AssertionError(f"{path} is not an IVF file (header {head[:8]!r})")
    _, version, header_len, fourcc, w, h, rate, scale, count = struct.unpack("<4sHH4sHHIII4x", head)
    return {
        "version": version, "header_len": header_len, "fourcc": fourcc, "width": w,
        "height": h, "rate": rate, "scale": scale, "frames": count,
    }


def ivf_frame_sizes(path: Path) -> list[int]:
    """The payload size of every frame in an IVF file (12-byte frame headers)."""
    data = path.read_bytes()
    header_len = struct.unpack_from("<H", data, 6)[0]
    pos, sizes = header_len, []
    while pos + 12 <= len(data):
        size = struct.unpack_from("<I", data, pos)[0]
        pos += 12 + size
        if pos > len(data):
            raise AssertionError(f"{path}: frame {len(sizes)} runs past the end of the file")
        sizes.append(size)
    return sizes


def annexb_nal_types(data: bytes) -> list[int]:
    """The nal_unit_type of every NAL unit of an H.264 Annex-B byte stream."""
    types = []
    i, n = 0, len(data)
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0 or j + 3 >= n:
            return types
        types.append(data[j + 3] & 0x1F)
        i = j + 3


def ogg_opus_head(path: Path) -> dict[str, int]:
    """The OpusHead of an Ogg Opus file: channels, pre-skip, input sample rate."""
    data = path.read_bytes()[:512]
    if data[:4] != b"OggS":
        raise AssertionError(f"{path} is not an Ogg file (starts {data[:8]!r})")
    at = data.find(b"OpusHead")
    if at < 0:
        raise AssertionError(f"{path}: no OpusHead in its first page")
    channels, pre_skip, rate = struct.unpack_from("<BHI", data, at + 9)
    return {"channels": channels, "pre_skip": pre_skip, "input_sample_rate": rate}


# --------------------------------------------------------------------------
# checking the fixtures


def verify_video(path: Path, kind: VideoKind) -> DecodedVideo:
    p = probe(path)
    want_frames = VIDEO_FPS * CLIP_SECONDS
    assert (p.codec, p.width, p.height, p.pix_fmt, p.frame_rate, p.frames) == (
        kind.probe_codec, VIDEO_W, VIDEO_H, "yuv420p", f"{VIDEO_FPS}/1", want_frames
    ), f"{path}: {p}"
    if kind.ivf_fourcc is not None:
        assert p.format_name == "ivf", f"{path}: {p}"
        head = ivf_header(path)
        assert (head["fourcc"], head["width"], head["height"]) == (
            kind.ivf_fourcc, VIDEO_W, VIDEO_H
        ), f"{path}: IVF header {head}"
        sizes = ivf_frame_sizes(path)
        # one IVF frame per shown picture: no separate hidden frames
        assert len(sizes) == want_frames and min(sizes) > 0, f"{path}: IVF frame sizes {sizes[:10]}..."
    else:
        assert p.format_name == "h264" and p.profile == "Constrained Baseline", f"{path}: {p}"
        data = path.read_bytes()
        assert data.startswith(b"\x00\x00\x00\x01"), f"{path} does not start with an Annex-B start code"
        types = annexb_nal_types(data)
        idr = [i for i, t in enumerate(types) if t == 5]
        assert len(idr) == CLIP_SECONDS * VIDEO_FPS // KEYFRAME_INTERVAL, f"{path}: NAL types {types}"
        for i in idr:
            # SPS (7) and PPS (8) before each IDR, possibly with SEI (6) / AUD (9)
            before = [t for t in types[max(0, i - 4) : i] if t in (7, 8)]
            assert 7 in before and 8 in before, f"{path}: IDR at NAL {i} has no SPS/PPS before it: {types[:i + 1][-6:]}"
        assert set(types) <= {1, 5, 6, 7, 8, 9}, f"{path}: unexpected NAL types {sorted(set(types))}"
    decoded = verify_decoded_video(path)
    assert decoded.key_frames == CLIP_SECONDS * VIDEO_FPS // KEYFRAME_INTERVAL, f"{path}: {decoded.describe()}"
    return decoded


def verify_decoded_video(path: Path) -> DecodedVideo:
    decoded = decode_video(path)
    assert decoded.frames == VIDEO_FPS * CLIP_SECONDS, f"{path}: {decoded.describe()}"
    assert set(decoded.sizes) == {(VIDEO_W, VIDEO_H)}, f"{path}: {decoded.describe()}"
    off = decoded.off_colour(VIDEO_RGB, FIXTURE_COLOUR_TOLERANCE)
    assert not off, f"{path}: {len(off)} frames off colour, first {off[:3]}"
    return decoded


def verify_audio(path: Path, scratch: Path) -> ToneReport:
    p = probe(path)
    if path.suffix == ".ogg":
        assert (p.format_name, p.codec, p.channels, p.sample_rate) == ("ogg", "opus", 1, SAMPLE_RATE), f"{path}: {p}"
        head = ogg_opus_head(path)
        assert head["channels"] == 1 and head["input_sample_rate"] == SAMPLE_RATE, f"{path}: {head}"
        samples = read_wav(to_wav(path, scratch / (path.name + ".wav")))
    else:
        assert (p.format_name, p.codec, p.channels, p.sample_rate) == ("wav", "pcm_s16le", 1, SAMPLE_RATE), f"{path}: {p}"
        samples = read_wav(path)
    assert abs(len(samples) / SAMPLE_RATE - CLIP_SECONDS) < 0.05, f"{path}: {len(samples)} samples"
    report = tone_report(samples)
    assert report.has_tone(TONE_HZ, min_seconds=CLIP_SECONDS - 0.1, tolerance=2.0), f"{path}: {report.describe()}"
    # amplitude 0.5 of full scale: RMS about 0.35 * 32767
    assert 0.3 * 32767 < report.rms < 0.4 * 32767, f"{path}: {report.describe()}"
    return report


def verify(media: MediaFiles, scratch: Optional[Path] = None) -> None:
    """Check every fixture is what it claims; AssertionError otherwise."""
    scratch = scratch or media.directory
    for key, kind in VIDEO_KINDS.items():
        verify_video(media.video[key], kind)
    verify_audio(media.tone_ogg, scratch)
    verify_audio(media.tone_wav, scratch)
