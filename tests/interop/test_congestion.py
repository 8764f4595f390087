"""Congestion control against the python SDK through a real bottleneck (`aviary netem`):
a subscriber whose link is narrower than what it asked for gets the simulcast layer that
fits, keeps decoding it without freezes, keeps its audio, and climbs back to full
resolution once the link is widened.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc

from harness import (
    Client,
    Clients,
    ToneSender,
    publish_track,
    unique,
    wait_track_subscribed,
    wait_until,
)
from shaper import in_namespace, shaped_server

pytestmark = pytest.mark.skipif(not in_namespace(), reason="needs scripts/testnet.sh's namespace")

WIDTH, HEIGHT, FPS = 1280, 720, 15  # the SDK sends 320x180, 640x360 and 1280x720
LINK = "400k"  # narrower than the middle layer, wider than the low one plus audio
SETTLE_TIMEOUT = 25.0  # from the first frame to decoding only the low layer
WINDOW = 10.0  # seconds watched once settled
MAX_FREEZE = 1.0  # seconds without a decoded frame
MAX_LOSS = 0.02
CLIMB_TIMEOUT = 15.0  # from the link widening to full resolution
SEND_SECONDS = 120.0


class NoiseVideoSender:
    """A LocalVideoTrack fed with frames of random pixels (the encoder spends its whole
    budget on them, so every layer sends at its full rate) at `fps`."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.source = rtc.VideoSource(width, height)
        self.track = rtc.LocalVideoTrack.create_video_track("noise", self.source)
        rng = np.random.default_rng(7)
        self.frames = [
            rtc.VideoFrame(
                width,
                height,
                rtc.VideoBufferType.RGBA,
                rng.integers(0, 256, (height, width, 4), dtype=np.uint8).tobytes(),
            )
            for _ in range(6)
        ]
        self._task: asyncio.Task | None = None

    def start(self) -> "NoiseVideoSender":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while n / self.fps < SEND_SECONDS:
            delay = start + n / self.fps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.source.capture_frame(self.frames[n % len(self.frames)])
            n += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class FrameLog:
    """Every decoded frame of a remote video track: (arrival time, width)."""

    def __init__(self, track: rtc.Track) -> None:
        self.stream = rtc.VideoStream(track)
        self.frames: list[tuple[float, int]] = []
        loop = asyncio.get_running_loop()

        async def run() -> None:
            async for event in self.stream:
                self.frames.append((loop.time(), event.frame.width))

        self._task = loop.create_task(run())

    def between(self, t0: float, t1: float) -> list[tuple[float, int]]:
        return [f for f in self.frames if t0 <= f[0] <= t1]

    def longest_gap(self, t0: float, t1: float) -> float:
        times = [t0, *(t for t, _ in self.between(t0, t1)), t1]
        return max(b - a for a, b in zip(times, times[1:]))

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.stream.aclose()


class AudioCount:
    """Seconds of audio decoded from a remote audio track."""

    def __init__(self, track: rtc.Track) -> None:
        self.stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        self.samples = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for event in self.stream:
            self.samples += event.frame.samples_per_channel

    @property
    def seconds(self) -> float:
        return self.samples / 48000

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.stream.aclose()


@dataclass
class Inbound:
    received: int
    lost: int


async def video_inbound(client: Client) -> Inbound:
    """The subscriber's inbound video RTP counters (all its video streams)."""
    stats = await client.room.get_rtc_stats()
    total = Inbound(0, 0)
    for s in stats.subscriber_stats:
        if s.HasField("inbound_rtp") and s.inbound_rtp.stream.kind == "video":
            total.received += s.inbound_rtp.received.packets_received
            total.lost += max(0, s.inbound_rtp.received.packets_lost)
    return total


async def test_a_narrow_link_gets_the_layer_that_fits_then_full_resolution(tmp_path: Path) -> None:
    room = unique("narrow")
    with shaped_server(tmp_path, "--rate", LINK, "--queue", "32k") as (server, shaper):
        async with Clients(server) as clients:
            publisher = await clients.join(room, "pub")
            subscriber = await clients.join(room, "sub")
            video = NoiseVideoSender(WIDTH, HEIGHT, FPS).start()
            tone = ToneSender(440.0).start(SEND_SECONDS)
            frames = audio = None
            try:
                video_pub = await publish_track(
                    publisher,
                    video.track,
                    rtc.TrackPublishOptions(
                        source=rtc.TrackSource.SOURCE_CAMERA,
                        simulcast=True,
                        video_codec=rtc.VideoCodec.VP8,
                    ),
                )
                audio_pub = await publish_track(
                    publisher, tone.track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
                )
                video_track = (await wait_track_subscribed(subscriber, video_pub.sid)).args[0]
                audio_track = (await wait_track_subscribed(subscriber, audio_pub.sid)).args[0]
                frames = FrameLog(video_track)
                audio = AudioCount(audio_track)
                loop = asyncio.get_running_loop()

                # Settled: three seconds of frames, all of the low layer.
                def settled() -> bool:
                    now = loop.time()
                    recent = frames.between(now - 3, now)
                    return len(recent) >= 3 * FPS / 2 and all(w <= 320 for _, w in recent)

                try:
                    await wait_until(
                        settled,
                        timeout=SETTLE_TIMEOUT,
                        interval=0.5,
                        what=f"the subscriber behind {LINK}bit/s to decode only the 320-wide layer",
                    )
                except AssertionError as e:
                    last = [w for _, w in frames.frames[-3 * FPS :]]
                    raise AssertionError(f"{e}; widths of the last frames: {last}") from None

                before, audio_before, t0 = await video_inbound(subscriber), audio.seconds, loop.time()
                await asyncio.sleep(WINDOW)
                after, audio_after, t1 = await video_inbound(subscriber), audio.seconds, loop.time()
                widths = sorted({w for _, w in frames.between(t0, t1)})
                assert widths == [320], f"only the low layer while the link is narrow: {widths}"
                gap = frames.longest_gap(t0, t1)
                assert gap <= MAX_FREEZE, f"video froze for {gap:.2f} s on the narrow link"
                received = after.received - before.received
                lost = after.lost - before.lost
                assert received > WINDOW * FPS, f"only {received} video packets in {WINDOW} s"
                assert lost <= MAX_LOSS * (received + lost), (
                    f"{lost} of {received + lost} video packets lost once settled"
                )
                heard = audio_after - audio_before
                assert heard >= 0.9 * (t1 - t0), f"audio: {heard:.1f} s decoded in {t1 - t0:.1f} s"

                # The link is widened: the estimate grows by probing, and full resolution
                # comes back.
                shaper.set("rate 0")
                widened = loop.time()
                await wait_until(
                    lambda: any(w == WIDTH for t, w in frames.between(widened, loop.time())),
                    timeout=CLIMB_TIMEOUT,
                    interval=0.5,
                    what="full resolution back once the link is widened",
                )
            finally:
                for probe in (frames, audio):
                    if probe is not None:
                        await probe.close()
                await video.stop()
                await tone.stop()
