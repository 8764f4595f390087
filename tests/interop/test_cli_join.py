"""`aviary join`: Aviary's own (str0m) client joins a room, publishes media
files in real time, looping until --duration ends, records what it receives
with --subscribe-to, then leaves and exits 0.

    aviary join --url WS_URL --api-key K --api-secret S --room R --identity I
                [--publish FILE]... [--duration 30s] [--subscribe-to DIR]

What it publishes is checked where it arrives, decoded by a python SDK
subscriber (tone frequency, frame size and colour); what it records is
checked by decoding the files with ffmpeg. The media files come from the
session's `media` fixture (media_fixtures.py, made with ffmpeg).

The first tests check the helpers themselves (fixtures, ffprobe/ffmpeg
decoding, the FFT over WAV, the subprocess wrapper) and need no server.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pytest
from livekit import rtc

import media_fixtures as mf
from harness import (
    CONNECT_TIMEOUT,
    EVENT_TIMEOUT,
    MEDIA_TIMEOUT,
    SILENCE_RMS,
    STOP_TIMEOUT,
    STREAM_CLOSE_TIMEOUT,
    SUBSCRIBE_TIMEOUT,
    AudioProbe,
    Client,
    Clients,
    Event,
    Server,
    SineGenerator,
    SolidVideoSender,
    ToneSender,
    centre_rgba,
    colour_close,
    participant_identities,
    publish_track,
    rms,
    server_binary,
    unique,
    wait_until,
)

TONE_HZ = mf.TONE_HZ
TONE_SECONDS = 1.5  # of non-silent tone the SDK subscriber must hear
VIDEO_W, VIDEO_H = mf.VIDEO_W, mf.VIDEO_H
VIDEO_RGBA = (*mf.VIDEO_RGB, 255)
COLOUR_TOLERANCE = 40  # per channel, after a trip through a codec and a network

# Seconds.
HELP_TIMEOUT = 10.0
# from starting `aviary join` to the SDK subscriber having its tracks
TRACKS_TIMEOUT = CONNECT_TIMEOUT + SUBSCRIBE_TIMEOUT
# past --duration, for the command to leave the room and exit
EXIT_SLACK = 20.0
# for a command that has to fail before it joins anything
REFUSAL_TIMEOUT = 20.0
SETTLE = 1.0  # how long something that must not happen is given to happen anyway

# what `aviary join` prints for every track it publishes
PUBLISHED_LINE = re.compile(r"^published (TR_\S+) (\S+) from (.+)$")


# --------------------------------------------------------------------------
# running `aviary join`


def join_argv(server: Server, room: str, identity: str, *args: str) -> list[str]:
    return [
        str(server_binary()), "join",
        "--url", server.ws_url,
        "--api-key", server.api_key,
        "--api-secret", server.api_secret,
        "--room", room,
        "--identity", identity,
        *args,
    ]


def quiet_env() -> dict[str, str]:
    """The environment without RUST_LOG: the command's own default output."""
    env = dict(os.environ)
    env.pop("RUST_LOG", None)
    env["RUST_BACKTRACE"] = "1"
    return env


class JoinRun:
    """One child process (normally `aviary join`) whose stdout and stderr are
    collected line by line as they come. As a context manager it kills the
    process, by its pid, if it is still running at the end.

        async with JoinRun(argv) as run:
            ...
            status = await run.wait(timeout)
    """

    def __init__(self, argv: Sequence[str], env: Optional[dict[str, str]] = None) -> None:
        self.argv = [str(a) for a in argv]
        self.env = env
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._readers: list[asyncio.Task] = []
        self.started = 0.0
        self.ended: Optional[float] = None

    async def __aenter__(self) -> "JoinRun":
        env = self.env if self.env is not None else dict(os.environ, RUST_BACKTRACE="1")
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        self._readers = [
            loop.create_task(self._collect(self.proc.stdout, self.stdout_lines)),
            loop.create_task(self._collect(self.proc.stderr, self.stderr_lines)),
        ]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.kill()

    @staticmethod
    async def _collect(stream: Optional[asyncio.StreamReader], into: list[str]) -> None:
        if stream is None:
            return
        while True:
            line = await stream.readline()
            if not line:
                return
            into.append(line.decode("utf-8", errors="replace").rstrip("\r\n"))

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode if self.proc else None

    @property
    def elapsed(self) -> float:
        end = self.ended if self.ended is not None else asyncio.get_running_loop().time()
        return end - self.started

    def check_running(self) -> None:
        """Fail if the process has already exited."""
        if self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"the command exited early\n{self.describe()}")

    async def wait(self, timeout: float) -> int:
        """Wait for the process to exit and its output to be read; kill it and
        fail if it takes longer than `timeout`."""
        assert self.proc is not None, "not started"
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            await self.kill()
            raise AssertionError(f"the command did not exit within {timeout}s\n{self.describe()}") from None
        self.ended = asyncio.get_running_loop().time()
        await self._finish_readers()
        return self.proc.returncode

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()  # SIGKILL to this child's pid
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                pass
        await self._finish_readers()

    async def _finish_readers(self) -> None:
        pending = [t for t in self._readers if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=STREAM_CLOSE_TIMEOUT)
            for t in still:
                t.cancel()

    def published(self) -> list[tuple[str, str, str]]:
        """(track sid, mime type, path) of every `published ...` line on stdout."""
        found = []
        for line in self.stdout_lines:
            m = PUBLISHED_LINE.match(line.strip())
            if m:
                found.append((m.group(1), m.group(2), m.group(3)))
        return found

    def describe(self, lines: int = 40) -> str:
        status = "running" if self.returncode is None else f"exit status {self.returncode}"

        def tail(name: str, got: list[str]) -> str:
            shown = got[-lines:]
            return f"--- {name} ({len(got)} lines, last {len(shown)}) ---\n" + "\n".join(shown)

        return "\n".join(
            [f"$ {' '.join(self.argv)}  ({status})", tail("stdout", self.stdout_lines), tail("stderr", self.stderr_lines)]
        )


async def wait_while_running(
    run: JoinRun, predicate: Callable[[], Any], *, timeout: float, what: str
) -> Any:
    """wait_until, failing at once (with the command's output) if the command
    exits first."""

    def check() -> Any:
        value = predicate()
        if not value:
            run.check_running()
        return value

    try:
        return await wait_until(check, timeout=timeout, what=what, interval=0.1)
    except AssertionError as e:
        if "exited early" in str(e):
            raise
        raise AssertionError(f"{e}\n{run.describe()}") from None


def tracks_from(client: Client, identity: str) -> list[Event]:
    return [
        e for e in client.seen("track_subscribed")
        if e.participant is not None and e.participant.identity == identity
    ]


async def wait_cli_tracks(client: Client, run: JoinRun, identity: str, count: int) -> list[Event]:
    """The track_subscribed events of `count` tracks from `identity` at `client`."""
    return await wait_while_running(
        run,
        lambda: (lambda evs: evs if len(evs) >= count else None)(tracks_from(client, identity)),
        timeout=TRACKS_TIMEOUT,
        what=f"{client.label} to subscribe to {count} track(s) of {identity} (`aviary join`)",
    )


def the_track(events: list[Event], kind: type) -> tuple[Any, rtc.RemoteTrackPublication]:
    found = [e for e in events if isinstance(e.args[0], kind)]
    assert len(found) == 1, (
        f"want one {kind.__name__}, got {[type(e.args[0]).__name__ for e in events]}"
    )
    return found[0].args[0], found[0].args[1]


def check_published_lines(
    run: JoinRun, want: dict[Path, tuple[str, str]]
) -> None:
    """The `published TR_xxx MIME from PATH` lines on stdout are exactly one
    per file in `want` (path -> (track sid, mime type)); mime types compare
    case-insensitively, paths after resolving."""
    got = run.published()
    assert len(got) == len(want), (
        f"want {len(want)} `published TR_xxx MIME from PATH` lines, got {got}\n{run.describe()}"
    )
    by_path = {Path(path).resolve(): (sid, mime) for sid, mime, path in got}
    for path, (sid, mime) in want.items():
        assert path.resolve() in by_path, f"no `published` line for {path}: {got}"
        got_sid, got_mime = by_path[path.resolve()]
        assert got_sid == sid, f"{path}: printed track sid {got_sid}, the subscriber got {sid}"
        assert got_mime.lower() == mime.lower(), f"{path}: printed mime type {got_mime}, want {mime}"


# --------------------------------------------------------------------------
# the SDK side: decoded video as it arrives


class VideoProbe:
    """Reads an rtc.VideoStream of a remote video track in a background task
    and keeps (arrival time, width, height, centre pixel) of every frame."""

    def __init__(self, track: rtc.Track, label: str = "video") -> None:
        self.label = label
        self.stream = rtc.VideoStream(track)
        self._loop = asyncio.get_running_loop()
        self.frames: list[tuple[float, int, int, tuple[int, int, int, int]]] = []
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.stream:
            f = event.frame
            self.frames.append((self._loop.time(), f.width, f.height, centre_rgba(f)))

    def since(self, t0: float) -> list[tuple[float, int, int, tuple[int, int, int, int]]]:
        return [f for f in self.frames if f[0] >= t0]

    async def wait_frames(self, count: int, *, since: float = 0.0, timeout: float = MEDIA_TIMEOUT) -> list:
        """At least `count` frames decoded since `since`, or as many as came
        within `timeout` (the caller checks the number)."""
        deadline = self._loop.time() + timeout
        while len(self.since(since)) < count and self._loop.time() < deadline and not self._task.done():
            await asyncio.sleep(0.05)
        return self.since(since)

    def check(self, frames: list, min_frames: int, what: str) -> None:
        assert len(frames) >= min_frames, (
            f"{self.label}: {len(frames)} decoded video frames for {what}; at least {min_frames} wanted"
        )
        sizes = sorted({(w, h) for _, w, h, _ in frames})
        assert sizes == [(VIDEO_W, VIDEO_H)], (
            f"{self.label}: decoded frame sizes {sizes} for {what}, want only {VIDEO_W}x{VIDEO_H}"
        )
        off = [(i, px) for i, (_, _, _, px) in enumerate(frames) if not colour_close(px, VIDEO_RGBA, COLOUR_TOLERANCE)]
        assert not off, (
            f"{self.label}: {len(off)} of {len(frames)} frames for {what} have a centre pixel further "
            f"than {COLOUR_TOLERANCE} from {VIDEO_RGBA[:3]}: {off[:5]}"
        )

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.stream.aclose(), STREAM_CLOSE_TIMEOUT)
        except Exception:
            pass
        if not self._task.done():
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, STREAM_CLOSE_TIMEOUT)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
                pass


def first_loud(probe: AudioProbe) -> Optional[float]:
    """When the first non-silent audio frame arrived."""
    for t, samples in probe.frames:
        if rms(samples) > SILENCE_RMS:
            return t
    return None


# --------------------------------------------------------------------------
# the command must exist (fails every server test with one clear reason until it does)


@pytest.fixture(scope="module")
def join_command() -> Path:
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(f"no aviary binary at {binary}: run `cargo build` or set AVIARY_BIN")
    try:
        out = subprocess.run(
            [str(binary), "join", "--help"], capture_output=True, text=True, timeout=HELP_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{binary} join --help` did not finish within {HELP_TIMEOUT}s")
    if out.returncode != 0:
        pytest.fail(
            f"`aviary join` is not there: `{binary} join --help` exited {out.returncode}:\n"
            f"{(out.stderr or out.stdout).strip()}"
        )
    missing = [
        flag
        for flag in ("--url", "--api-key", "--api-secret", "--room", "--identity", "--publish", "--duration", "--subscribe-to")
        if flag not in out.stdout
    ]
    if missing:
        pytest.fail(f"`aviary join --help` does not mention {missing}:\n{out.stdout}")
    return binary


# --------------------------------------------------------------------------
# the helpers themselves (no server)


def test_helpers_media_fixtures_are_what_they_claim(media: mf.MediaFiles, tmp_path: Path) -> None:
    # the `media` fixture has run mf.verify already; this checks it once more
    # and states the bounds
    assert media.generation_seconds < 20, f"making the fixtures took {media.generation_seconds:.1f}s"
    assert {k: p.name for k, p in media.video.items()} == {
        "vp8": "red-vp8.ivf", "vp9": "red-vp9.ivf", "av1": "red-av1.ivf", "h264": "red.h264"
    }
    mf.verify(media, tmp_path)
    for key, kind in mf.VIDEO_KINDS.items():
        p = mf.probe(media.video[key])
        assert (p.codec, p.width, p.height, p.frames) == (kind.probe_codec, VIDEO_W, VIDEO_H, 150), p
    p = mf.probe(media.tone_ogg)
    assert (p.format_name, p.codec, p.channels) == ("ogg", "opus", 1), p
    times = mf.packet_times(media.vp8)
    assert len(times) == 150 and times == sorted(times) and abs(times[-1] - 149 / 30) < 1e-3, times[-3:]
    times = mf.packet_times(media.tone_ogg)
    assert times == sorted(times) and 4.9 < times[-1] - times[0] < 5.05, (times[:3], times[-3:])

    # the colour ffmpeg decodes is the colour the SDK's I420 -> RGBA
    # conversion (libyuv, what centre_rgba uses on decoded frames) gives
    for key in mf.VIDEO_KINDS:
        i420 = mf.decode_i420_frame(media.video[key], 10)
        assert len(i420) == VIDEO_W * VIDEO_H * 3 // 2, f"{key}: {len(i420)} bytes"
        frame = rtc.VideoFrame(VIDEO_W, VIDEO_H, rtc.VideoBufferType.I420, bytearray(i420))
        px = centre_rgba(frame)
        assert colour_close(px, VIDEO_RGBA, 10), f"{key}: the SDK converts frame 10's centre to {px}"


def test_helpers_media_checks_catch_wrong_media(media: mf.MediaFiles, tmp_path: Path) -> None:
    # a clip of another colour, and one of another size, fail the checks
    blue = tmp_path / "blue.ivf"
    mf.encode_video(blue, "vp8", rgb=(40, 40, 200), seconds=1)
    decoded = mf.decode_video(blue)
    assert decoded.frames == 30 and len(decoded.off_colour(mf.VIDEO_RGB, COLOUR_TOLERANCE)) == 30
    with pytest.raises(AssertionError):
        mf.verify_decoded_video(blue)
    small = tmp_path / "small.ivf"
    mf.encode_video(small, "vp9", size=(160, 120), seconds=1)
    assert set(mf.decode_video(small).sizes) == {(160, 120)}
    assert mf.ivf_header(small)["width"] == 160
    with pytest.raises(AssertionError):
        mf.verify_video(small, mf.VIDEO_KINDS["vp9"])
    # the VP8 fixture does not pass as VP9, nor a short one as 5 s
    with pytest.raises(AssertionError):
        mf.verify_video(media.vp8, mf.VIDEO_KINDS["vp9"])
    with pytest.raises(AssertionError):
        mf.verify_video(blue, mf.VIDEO_KINDS["vp8"])

    # another tone (Ogg Opus, through ffmpeg to WAV) is not the tone
    other = tmp_path / "880.ogg"
    mf.encode_tone(other, "ogg", frequency=880.0, seconds=2)
    report = mf.audio_tone(other, tmp_path)
    assert abs(report.frequency - 880.0) < 2.0 and not report.has_tone(TONE_HZ, min_seconds=1.0), report.describe()
    with pytest.raises(AssertionError):
        mf.verify_audio(other, tmp_path)
    # the WAV reader against the harness's own sine: the same samples
    samples = mf.read_wav(media.tone_wav)
    gen = SineGenerator(TONE_HZ)
    ours = np.concatenate([gen.samples() for _ in range(10)]).astype(np.float64)
    assert np.max(np.abs(samples[: len(ours)] - ours)) <= 2.0
    # silence with a little of the tone: too short to count
    quiet = np.zeros(mf.SAMPLE_RATE * 3)
    quiet[: mf.SAMPLE_RATE // 2] = samples[: mf.SAMPLE_RATE // 2]
    assert not mf.tone_report(quiet).has_tone(TONE_HZ, min_seconds=1.0)

    # files that are not what their name says
    text = tmp_path / "x.ivf"
    text.write_text("this is not a video\n")
    with pytest.raises(AssertionError):
        mf.probe(text)
    with pytest.raises(AssertionError):
        mf.ivf_header(text)
    with pytest.raises(AssertionError):
        mf.ogg_opus_head(media.tone_wav)
    truncated = tmp_path / "truncated.ivf"
    truncated.write_bytes(media.vp8.read_bytes()[:200])
    with pytest.raises(AssertionError):
        mf.ivf_frame_sizes(truncated)
    assert mf.annexb_nal_types(b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\x00\x00\x00\x01\x65\xcc") == [7, 8, 5]


async def test_helpers_join_run_collects_output_and_kills(tmp_path: Path) -> None:
    script = (
        "echo 'published TR_abc video/VP8 from /tmp/red.ivf'; echo noise; "
        "echo 'published TR_def audio/opus from /tmp/tone with spaces.ogg'; "
        "echo 'bad.ivf: not an IVF file' >&2; exit 2"
    )
    async with JoinRun(["/bin/sh", "-c", script]) as run:
        assert await run.wait(10) == 2
    assert run.published() == [
        ("TR_abc", "video/VP8", "/tmp/red.ivf"),
        ("TR_def", "audio/opus", "/tmp/tone with spaces.ogg"),
    ]
    assert run.stderr_lines == ["bad.ivf: not an IVF file"]
    check_published_lines(run, {Path("/tmp/red.ivf"): ("TR_abc", "video/vp8"), Path("/tmp/tone with spaces.ogg"): ("TR_def", "AUDIO/OPUS")})
    with pytest.raises(AssertionError):
        check_published_lines(run, {Path("/tmp/red.ivf"): ("TR_xyz", "video/VP8"), Path("/tmp/tone with spaces.ogg"): ("TR_def", "audio/opus")})

    # a command that outlives its bound is killed and reported
    started = time.monotonic()
    async with JoinRun(["/bin/sleep", "60"]) as run:
        with pytest.raises(AssertionError, match="did not exit within"):
            await run.wait(0.5)
        assert run.returncode is not None, "the process should have been killed"
        with pytest.raises(AssertionError, match="exited early"):
            run.check_running()
    async with JoinRun(["/bin/sleep", "60"]) as run:
        pid = run.proc.pid
    assert run.returncode is not None and time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --------------------------------------------------------------------------
# (a) publishing Ogg Opus and VP8 IVF


async def test_join_publishes_opus_and_vp8_to_a_python_subscriber(
    server: Server, media: mf.MediaFiles, join_command: Path
) -> None:
    room = unique("join-av")
    identity = "aviary-cli"
    # longer than the 5 s files, so the subscriber sees them loop
    duration = 12.0
    loop = asyncio.get_running_loop()
    async with Clients(server) as clients:
        watcher = await clients.join(room, "watcher")
        argv = join_argv(
            server, room, identity,
            "--publish", str(media.tone_ogg), "--publish", str(media.vp8),
            "--duration", f"{duration:g}s",
        )
        probe: Optional[AudioProbe] = None
        video: Optional[VideoProbe] = None
        async with JoinRun(argv) as run:
            try:
                events = await wait_cli_tracks(watcher, run, identity, 2)
                audio_track, audio_pub = the_track(events, rtc.RemoteAudioTrack)
                video_track, video_pub = the_track(events, rtc.RemoteVideoTrack)
                assert audio_pub.kind == rtc.TrackKind.KIND_AUDIO and video_pub.kind == rtc.TrackKind.KIND_VIDEO
                assert video_pub.mime_type.lower() == "video/vp8", f"video track mime type {video_pub.mime_type!r}"
                assert audio_pub.sid.startswith("TR_") and video_pub.sid.startswith("TR_")
                assert "aviary-cli" in watcher.room.remote_participants

                probe = AudioProbe(audio_track, "watcher")
                video = VideoProbe(video_track, "watcher")
                frames, report = await asyncio.gather(
                    video.wait_frames(25),
                    probe.wait_for_tone(TONE_HZ, min_seconds=TONE_SECONDS, what="tone.ogg from aviary join"),
                )
                video.check(frames, 20, "red-vp8.ivf from aviary join")
                assert report.rms > 1000, f"the tone arrived too quiet: {report.describe()}"

                # both go on after the 5 s files have played once: they loop
                start = first_loud(probe)
                assert start is not None
                looped = start + mf.CLIP_SECONDS + 0.5
                wait = max(0.0, looped - loop.time())
                await probe.wait_for_tone(
                    TONE_HZ, min_seconds=1.0, since=looped, timeout=wait + 1.0 + MEDIA_TIMEOUT,
                    what=f"tone.ogg playing again after its {mf.CLIP_SECONDS} s (looping)",
                )
                again = await video.wait_frames(10, since=looped, timeout=max(0.0, looped - loop.time()) + MEDIA_TIMEOUT)
                video.check(again, 10, f"red-vp8.ivf after its {mf.CLIP_SECONDS} s (looping)")
            finally:
                if probe is not None:
                    await probe.close()
                if video is not None:
                    await video.close()

            status = await run.wait(duration + EXIT_SLACK)
        assert status == 0, f"aviary join exited {status}\n{run.describe()}"
        assert run.elapsed >= duration - 0.5, f"aviary join left after {run.elapsed:.1f}s, before --duration {duration:g}s"
        check_published_lines(
            run,
            {media.tone_ogg: (audio_pub.sid, mf.OPUS_MIME), media.vp8: (video_pub.sid, "video/VP8")},
        )
        # it leaves the room when it is done
        await watcher.wait_event(
            "participant_disconnected",
            lambda e: e.participant is not None and e.participant.identity == identity,
            timeout=EVENT_TIMEOUT,
            what="the watcher to see aviary join leave",
        )


# --------------------------------------------------------------------------
# (b) VP9 and AV1 IVF, H.264 Annex-B


@pytest.mark.parametrize("codec", ["vp9", "av1", "h264"])
async def test_join_publishes_a_video_file(
    server: Server, media: mf.MediaFiles, join_command: Path, codec: str
) -> None:
    kind = mf.VIDEO_KINDS[codec]
    path = media.video[codec]
    room = unique(f"join-{codec}")
    identity = f"aviary-{codec}"
    duration = 6.0
    async with Clients(server) as clients:
        watcher = await clients.join(room, "watcher")
        argv = join_argv(server, room, identity, "--publish", str(path), "--duration", f"{duration:g}s")
        video: Optional[VideoProbe] = None
        async with JoinRun(argv) as run:
            try:
                events = await wait_cli_tracks(watcher, run, identity, 1)
                track, pub = the_track(events, rtc.RemoteVideoTrack)
                assert pub.mime_type.lower() == kind.mime.lower(), (
                    f"track mime type {pub.mime_type!r}, want {kind.mime} (from {path.name})"
                )
                video = VideoProbe(track, "watcher")
                frames = await video.wait_frames(15)
                video.check(frames, 10, f"{path.name} from aviary join")
            finally:
                if video is not None:
                    await video.close()
            status = await run.wait(duration + EXIT_SLACK)
        assert status == 0, f"aviary join exited {status}\n{run.describe()}"
        check_published_lines(run, {path: (pub.sid, kind.mime)})


# --------------------------------------------------------------------------
# (c) recording with --subscribe-to


async def test_join_subscribe_to_records_what_it_receives(
    server: Server, media: mf.MediaFiles, join_command: Path, tmp_path: Path
) -> None:
    room = unique("join-rec")
    identity = "recorder"
    duration = 6.0
    out_dir = tmp_path / "recorded"
    out_dir.mkdir()
    async with Clients(server) as clients:
        sender = await clients.join(room, "sender")
        tone = ToneSender(TONE_HZ, name="tone").start()
        # frames flow before publishing, so the encoder never sees the SDK's black ones
        solid = SolidVideoSender(VIDEO_W, VIDEO_H, VIDEO_RGBA, name="solid").start()
        try:
            audio_pub = await publish_track(
                sender, tone.track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            )
            video_pub = await publish_track(
                sender,
                solid.track,
                rtc.TrackPublishOptions(
                    source=rtc.TrackSource.SOURCE_CAMERA,
                    simulcast=False,
                    video_codec=rtc.VideoCodec.VP8,
                    degradation_preference=rtc.DegradationPreference.MAINTAIN_RESOLUTION,
                ),
            )
            argv = join_argv(
                server, room, identity, "--duration", f"{duration:g}s", "--subscribe-to", str(out_dir)
            )
            async with JoinRun(argv) as run:
                await wait_while_running(
                    run,
                    lambda: sender.seen(
                        "participant_connected",
                        lambda e: e.participant is not None and e.participant.identity == identity,
                    ),
                    timeout=CONNECT_TIMEOUT,
                    what="the sender to see aviary join (the recorder) arrive",
                )
                status = await run.wait(duration + EXIT_SLACK)
            tone.check()
        finally:
            await tone.stop()
            await solid.stop()
    assert status == 0, f"aviary join exited {status}\n{run.describe()}"
    assert run.published() == [], f"nothing to publish, yet: {run.published()}"

    ogg = out_dir / f"sender-{audio_pub.sid}.ogg"
    ivf = out_dir / f"sender-{video_pub.sid}.ivf"
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == sorted([ogg.name, ivf.name]), f"{out_dir} holds {files}, want {[ogg.name, ivf.name]}"

    # the audio: Ogg Opus that decodes to the tone
    head = mf.ogg_opus_head(ogg)
    assert head["channels"] in (1, 2), f"{ogg.name}: OpusHead {head}"
    p = mf.probe(ogg)
    assert (p.format_name, p.codec) == ("ogg", "opus"), f"{ogg.name}: {p}"
    report = mf.audio_tone(ogg, tmp_path)
    assert report.has_tone(TONE_HZ, min_seconds=2.0), f"{ogg.name} decoded: {report.describe()}"
    assert report.seconds <= duration + 1.0, f"{ogg.name} decodes to more audio than was sent: {report.describe()}"

    # the video: a VP8 IVF of 320x240 frames of the colour
    header = mf.ivf_header(ivf)
    assert header["fourcc"] == b"VP80", f"{ivf.name}: IVF header {header}"
    p = mf.probe(ivf)
    assert (p.format_name, p.codec) == ("ivf", "vp8"), f"{ivf.name}: {p}"
    decoded = mf.decode_video(ivf)
    assert decoded.frames >= 20, f"{ivf.name}: {decoded.describe()}"
    assert set(decoded.sizes) == {(VIDEO_W, VIDEO_H)}, f"{ivf.name}: {decoded.describe()}"
    off = decoded.off_colour(mf.VIDEO_RGB, COLOUR_TOLERANCE)
    assert not off, f"{ivf.name}: {len(off)} of {decoded.frames} frames off colour, first {off[:5]}"
    # the frames' timestamps (IVF frame headers, in the header's time base)
    # rise and span about the time the recorder was there
    times = mf.packet_times(ivf)
    assert times == sorted(times), f"{ivf.name}: frame times go backwards: {times[:20]}"
    span = times[-1] - times[0] if times else 0.0
    assert 1.0 <= span <= duration + 1.0, (
        f"{ivf.name}: its {len(times)} frames span {span:.3f}s by their timestamps "
        f"(time base {header['scale']}/{header['rate']}); want 1 to {duration + 1:g}s"
    )


# --------------------------------------------------------------------------
# (d) files it cannot publish


def _missing(tmp_path: Path, media: mf.MediaFiles) -> Path:
    return tmp_path / "no-such-file.ivf"


def _text_as_ivf(tmp_path: Path, media: mf.MediaFiles) -> Path:
    path = tmp_path / "x.ivf"
    path.write_text("this is not a video\n")
    return path


def _unsupported_extension(tmp_path: Path, media: mf.MediaFiles) -> Path:
    return media.tone_wav  # a real 440 Hz WAV: a kind of file it does not take


BAD_FILES = {
    "missing": _missing,
    "text-named-ivf": _text_as_ivf,
    "unsupported-extension": _unsupported_extension,
}


@pytest.mark.parametrize("case", list(BAD_FILES))
async def test_join_refuses_a_bad_file_before_joining(
    server: Server, media: mf.MediaFiles, join_command: Path, tmp_path: Path, case: str
) -> None:
    bad = BAD_FILES[case](tmp_path, media)
    room = unique("join-bad")
    identity = "refused-cli"
    async with Clients(server) as clients, server.api() as lk:
        observer = await clients.join(room, "observer")
        # a good file first: every file is checked before joining
        argv = join_argv(
            server, room, identity,
            "--publish", str(media.tone_ogg), "--publish", str(bad), "--duration", "5s",
        )
        async with JoinRun(argv, env=quiet_env()) as run:
            status = await run.wait(REFUSAL_TIMEOUT)
        assert status == 2, f"want exit status 2 for {bad.name} ({case})\n{run.describe()}"
        lines = [line for line in run.stderr_lines if line.strip()]
        assert len(lines) == 1 and bad.name in lines[0], (
            f"want one line on stderr naming {bad.name}\n{run.describe()}"
        )
        assert run.published() == [], f"it published before refusing\n{run.describe()}"

        await asyncio.sleep(SETTLE)
        joined = observer.seen(
            "participant_connected", lambda e: e.participant is not None and e.participant.identity == identity
        )
        assert not joined, f"{identity} joined the room although {bad.name} is bad"
        assert await participant_identities(lk, room) == ["observer"]


# --------------------------------------------------------------------------
# (e) --publish-demo: no files needed


DEMO_W, DEMO_H = 320, 240


async def test_join_publish_demo_is_heard_and_seen(server: Server, join_command: Path) -> None:
    """The built-in tone and moving test pattern reach an SDK subscriber; the
    command says when it joined and what it published."""
    room = unique("join-demo")
    identity = "demo"
    async with Clients(server) as clients:
        watcher = await clients.join(room, "watcher")
        argv = join_argv(server, room, identity, "--publish-demo", "--duration", "10s")
        probe: Optional[AudioProbe] = None
        video: Optional[VideoProbe] = None
        async with JoinRun(argv) as run:
            try:
                events = await wait_cli_tracks(watcher, run, identity, 2)
                audio_track, audio_pub = the_track(events, rtc.RemoteAudioTrack)
                video_track, video_pub = the_track(events, rtc.RemoteVideoTrack)
                assert video_pub.mime_type.lower() == "video/vp8"
                probe = AudioProbe(audio_track, "watcher")
                video = VideoProbe(video_track, "watcher")
                frames, report = await asyncio.gather(
                    video.wait_frames(30),
                    probe.wait_for_tone(TONE_HZ, min_seconds=TONE_SECONDS, what="the demo tone"),
                )
                assert report.rms > 1000, f"the demo tone arrived too quiet: {report.describe()}"
                assert len(frames) >= 20, f"{len(frames)} demo frames decoded"
                sizes = {(w, h) for _, w, h, _ in frames}
                assert sizes == {(DEMO_W, DEMO_H)}, sizes
                # a moving pattern: the picture changes
                assert len({px for _, _, _, px in frames}) > 1 or len(frames) < 2, "every frame is the same"
            finally:
                if probe is not None:
                    await probe.close()
                if video is not None:
                    await video.close()
            status = await run.wait(10 + EXIT_SLACK)
        assert status == 0, run.describe()
        joined = [line for line in run.stdout_lines if line.startswith("joined room ")]
        assert joined and f"joined room {room} at {server.ws_url} as {identity} (PA_" in joined[0], run.describe()
        assert sorted((mime.lower(), path) for _, mime, path in run.published()) == [
            ("audio/opus", "demo-tone"), ("video/vp8", "demo-pattern"),
        ], run.describe()


async def test_join_takes_a_token_and_says_what_it_receives(server: Server, join_command: Path) -> None:
    room = unique("join-token")
    async with Clients(server) as clients:
        watcher = await clients.join(room, "watcher")
        sender = ToneSender(TONE_HZ).start()
        try:
            pub = await publish_track(
                watcher, sender.track,
                rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
            )
            token = server.token("by-token", room)
            argv = [
                str(server_binary()), "join", "--url", server.ws_url, "--token", token,
                "--duration", "6s",
            ]
            async with JoinRun(argv) as run:
                await wait_while_running(
                    run,
                    lambda: any(line == f"receiving {pub.sid} (opus) from watcher" for line in run.stdout_lines),
                    timeout=TRACKS_TIMEOUT,
                    what="`aviary join --token` to say it receives the watcher's tone",
                )
                assert "by-token" in watcher.room.remote_participants, "it joined as the token's identity"
                status = await run.wait(6 + EXIT_SLACK)
            assert status == 0, run.describe()
            assert any(line.startswith(f"joined room {room} ") and " as by-token " in line for line in run.stdout_lines)
        finally:
            await sender.stop()
