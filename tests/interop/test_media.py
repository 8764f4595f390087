"""The media plane through the python SDK (livekit.rtc): audio and video
forwarded from a publisher to its subscribers, data packets, mute, server-side
unsubscription and unpublishing.

What is checked is what arrives, decoded, at the subscriber: the dominant
frequency of a sine tone, the colour of a solid video frame, the payloads of
data packets in order. The first two tests check the helpers that do that on
synthetic input, without a server.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import pytest

import numpy as np
from livekit import api, rtc
from livekit.protocol import models

from harness import (
    EVENT_TIMEOUT,
    FRAME_SAMPLES,
    MEDIA_TIMEOUT,
    SAMPLE_RATE,
    SUBSCRIBE_TIMEOUT,
    AudioProbe,
    Client,
    Clients,
    Server,
    SineGenerator,
    SolidVideoSender,
    ToneSender,
    analyse_tone,
    centre_rgba,
    colour_close,
    dominant_frequency,
    frame_samples,
    publish_track,
    solid_frame,
    unique,
    wait_track_subscribed,
    wait_until,
    within,
)

TONE_HZ = 440.0
TONE_SECONDS = 1.5  # of non-silent audio the subscriber must hear
SETTLE = 1.5  # how long something that must NOT arrive is given to arrive anyway

VIDEO_W, VIDEO_H = 320, 240
VIDEO_RGBA = (200, 40, 40, 255)
COLOUR_TOLERANCE = 40  # per channel, for the codec's loss
VIDEO_FRAMES = 25  # decoded frames the subscriber checks (at least 20 asked)

DATA_MESSAGES = 500
# publish_data and data arriving; the first publish_data waits (up to 15 s in
# the SDK) for the publisher connection to come up
DATA_TIMEOUT = 20.0


def audio_options() -> rtc.TrackPublishOptions:
    # everything else as the SDK defaults it (Opus, DTX and RED on)
    return rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)


def video_options(codec: "rtc.VideoCodec.ValueType" = rtc.VideoCodec.VP8) -> rtc.TrackPublishOptions:
    # One layer, so the test doesn't depend on simulcast layer selection (at
    # 320x240 the SDK would send one layer anyway), and no downscaling by the
    # encoder when the machine is busy.
    return rtc.TrackPublishOptions(
        source=rtc.TrackSource.SOURCE_CAMERA,
        simulcast=False,
        video_codec=codec,
        degradation_preference=rtc.DegradationPreference.MAINTAIN_RESOLUTION,
    )


async def publish_tone(
    client: Client, name: str = "tone"
) -> tuple[ToneSender, rtc.LocalTrackPublication]:
    sender = ToneSender(TONE_HZ, name=name).start()
    try:
        publication = await publish_track(client, sender.track, audio_options())
    except BaseException:
        await sender.stop()
        raise
    assert publication.sid.startswith("TR_"), f"track sid {publication.sid!r} lacks the TR_ prefix"
    return sender, publication


def remote_publication(
    client: Client, identity: str, sid: str
) -> rtc.RemoteTrackPublication | None:
    participant = client.room.remote_participants.get(identity)
    return participant.track_publications.get(sid) if participant else None


def data_from(client: Client, identity: str, topic: str | None = None) -> list[rtc.DataPacket]:
    packets = [e.args[0] for e in client.seen("data_received")]
    return [
        p
        for p in packets
        if p.participant is not None
        and p.participant.identity == identity
        and (topic is None or p.topic == topic)
    ]


# --------------------------------------------------------------------------
# the helpers themselves, on synthetic input (no server)


def test_helpers_tone_analysis_on_synthetic_audio() -> None:
    gen = SineGenerator(TONE_HZ)
    silence = [np.zeros(FRAME_SAMPLES) for _ in range(50)]
    tone = [gen.samples().astype(np.float64) for _ in range(150)]
    report = analyse_tone(silence + tone)
    assert abs(report.frequency - TONE_HZ) < 1.0, report.describe()
    assert report.loud_seconds == 1.5 and report.analysed_seconds == 1.5
    assert report.tone_share > 0.95
    assert report.has_tone(TONE_HZ, min_seconds=TONE_SECONDS)
    assert not report.has_tone(TONE_HZ, min_seconds=2.0)

    # frames made by the sender's own path (AudioFrame) read back the same
    frame = SineGenerator(TONE_HZ).frame()
    assert frame.samples_per_channel == FRAME_SAMPLES and frame.sample_rate == SAMPLE_RATE
    assert np.array_equal(frame_samples(frame), SineGenerator(TONE_HZ).samples().astype(np.float64))

    # a tone under noise is still found; noise alone, another tone or silence is not the tone
    rng = np.random.default_rng(1)
    noisy = [f + rng.normal(0, 1000, FRAME_SAMPLES) for f in tone]
    assert analyse_tone(noisy).has_tone(TONE_HZ, min_seconds=TONE_SECONDS)
    noise = [rng.normal(0, 5000, FRAME_SAMPLES) for _ in range(150)]
    assert not analyse_tone(noise).has_tone(TONE_HZ, min_seconds=1.0)
    other = SineGenerator(880.0)
    assert not analyse_tone([other.samples().astype(np.float64) for _ in range(150)]).has_tone(
        TONE_HZ, min_seconds=1.0
    )
    off_by_15 = SineGenerator(TONE_HZ + 15)
    assert not analyse_tone([off_by_15.samples().astype(np.float64) for _ in range(150)]).has_tone(
        TONE_HZ, min_seconds=1.0
    )
    quiet = analyse_tone(silence)
    assert quiet.loud_seconds == 0 and not quiet.has_tone(TONE_HZ, min_seconds=0.1)
    assert analyse_tone([]).frames == 0
    freq, share = dominant_frequency(np.concatenate(tone)[:SAMPLE_RATE], SAMPLE_RATE)
    assert abs(freq - TONE_HZ) < 0.5 and share > 0.95


def test_helpers_colour_check_on_synthetic_frames() -> None:
    frame = solid_frame(VIDEO_W, VIDEO_H, VIDEO_RGBA)
    assert centre_rgba(frame) == VIDEO_RGBA
    # through I420 and back, as a decoded frame comes
    i420 = frame.convert(rtc.VideoBufferType.I420)
    assert (i420.width, i420.height, i420.type) == (VIDEO_W, VIDEO_H, rtc.VideoBufferType.I420)
    px = centre_rgba(i420)
    assert colour_close(px, VIDEO_RGBA, 8), px
    assert not colour_close(
        centre_rgba(solid_frame(VIDEO_W, VIDEO_H, (40, 40, 200, 255))), VIDEO_RGBA, COLOUR_TOLERANCE
    )
    assert not colour_close(
        centre_rgba(solid_frame(VIDEO_W, VIDEO_H, (0, 0, 0, 255))), VIDEO_RGBA, COLOUR_TOLERANCE
    )
    # only the centre counts: a frame with a different centre is caught
    data = bytearray(bytes(VIDEO_RGBA) * (VIDEO_W * VIDEO_H))
    i = ((VIDEO_H // 2) * VIDEO_W + VIDEO_W // 2) * 4
    data[i : i + 4] = bytes((0, 255, 0, 255))
    odd = rtc.VideoFrame(VIDEO_W, VIDEO_H, rtc.VideoBufferType.RGBA, data)
    assert not colour_close(centre_rgba(odd), VIDEO_RGBA, COLOUR_TOLERANCE)


# --------------------------------------------------------------------------
# audio and video


async def test_audio_tone_reaches_the_subscriber(server: Server) -> None:
    room = unique("audio")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")

        sender, publication = await publish_tone(alice, "tone")
        probe = None
        try:
            subscribed = await wait_track_subscribed(bob, publication.sid)
            track, pub, _ = subscribed.args
            assert subscribed.participant.identity == "alice"
            assert isinstance(
                track, rtc.RemoteAudioTrack
            ), f"expected an audio track, got {track!r}"
            assert pub.kind == rtc.TrackKind.KIND_AUDIO
            assert pub.name == "tone"
            assert pub.source == rtc.TrackSource.SOURCE_MICROPHONE
            assert track.sid == publication.sid

            probe = AudioProbe(track, "bob")
            report = await probe.wait_for_tone(
                TONE_HZ, min_seconds=TONE_SECONDS, what="alice's tone at bob"
            )
            sender.check()
            assert report.rms > 1000, f"the tone arrived too quiet: {report.describe()}"
        finally:
            if probe is not None:
                await probe.close()
            await sender.stop()


# The SFU forwards RTP without looking inside, so every codec libwebrtc negotiates must
# arrive decodable.
VIDEO_CODECS = {
    "vp8": (rtc.VideoCodec.VP8, "video/vp8"),
    "vp9": (rtc.VideoCodec.VP9, "video/vp9"),
    "h264": (rtc.VideoCodec.H264, "video/h264"),
    "av1": (rtc.VideoCodec.AV1, "video/av1"),
}


@pytest.mark.parametrize("codec_name", list(VIDEO_CODECS))
async def test_video_frames_reach_the_subscriber(server: Server, codec_name: str) -> None:
    codec, mime = VIDEO_CODECS[codec_name]
    room = unique(f"video-{codec_name}")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")

        # frames flow into the source before it is published, so the encoder
        # never sees the SDK's black keep-alive frames
        sender = SolidVideoSender(VIDEO_W, VIDEO_H, VIDEO_RGBA, name="solid").start()
        try:
            publication = await publish_track(alice, sender.track, video_options(codec))
            subscribed = await wait_track_subscribed(bob, publication.sid)
            track, pub, _ = subscribed.args
            assert pub.mime_type.lower() == mime, f"track mime type {pub.mime_type!r}, want {mime}"
            assert subscribed.participant.identity == "alice"
            assert isinstance(track, rtc.RemoteVideoTrack), f"expected a video track, got {track!r}"
            assert pub.kind == rtc.TrackKind.KIND_VIDEO
            assert pub.name == "solid"
            assert pub.source == rtc.TrackSource.SOURCE_CAMERA
            assert not pub.simulcasted, "published without simulcast, yet marked simulcasted"

            frames = await decoded_frames(track, VIDEO_FRAMES, MEDIA_TIMEOUT)
            assert len(frames) >= 20, (
                f"bob decoded {len(frames)} video frames within {MEDIA_TIMEOUT}s "
                f"(alice captured {sender.frames_sent}); at least 20 wanted"
            )
            sizes = sorted({(w, h) for w, h, _ in frames})
            assert sizes == [
                (VIDEO_W, VIDEO_H)
            ], f"decoded frame sizes {sizes}, want only {VIDEO_W}x{VIDEO_H}"
            off = [
                (i, px)
                for i, (_, _, px) in enumerate(frames)
                if not colour_close(px, VIDEO_RGBA, COLOUR_TOLERANCE)
            ]
            assert not off, (
                f"{len(off)} of {len(frames)} frames have a centre pixel further than "
                f"{COLOUR_TOLERANCE} from {VIDEO_RGBA[:3]}: {off[:5]}"
            )
        finally:
            await sender.stop()


async def decoded_frames(track: rtc.Track, count: int, timeout: float) -> list[tuple[int, int, tuple]]:
    """(width, height, centre pixel) of the first `count` frames decoded from `track`, or
    of those decoded within `timeout`."""
    stream = rtc.VideoStream(track)
    frames: list[tuple[int, int, tuple]] = []

    async def read() -> None:
        async for event in stream:
            f = event.frame
            frames.append((f.width, f.height, centre_rgba(f)))
            if len(frames) >= count:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        try:
            await asyncio.wait_for(stream.aclose(), 5)
        except Exception:
            pass
    return frames


async def test_video_reaches_a_late_joiner(server: Server) -> None:
    """carol joins seconds after the video started, long after its first keyframe (the
    encoder makes none unasked): the server asks the publisher for one, and she decodes."""
    room = unique("late-video")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        sender = SolidVideoSender(VIDEO_W, VIDEO_H, VIDEO_RGBA, name="solid").start()
        try:
            publication = await publish_track(alice, sender.track, video_options())
            early = await decoded_frames(
                (await wait_track_subscribed(bob, publication.sid)).args[0], VIDEO_FRAMES, MEDIA_TIMEOUT
            )
            assert len(early) >= 20, f"bob, there from the start, decoded {len(early)} frames"
            await asyncio.sleep(3)  # the stream is well past its first keyframe

            carol = await clients.join(room, "carol")
            late = await decoded_frames(
                (await wait_track_subscribed(carol, publication.sid)).args[0], VIDEO_FRAMES, MEDIA_TIMEOUT
            )
            assert len(late) >= 20, f"carol, who joined late, decoded {len(late)} frames within {MEDIA_TIMEOUT}s"
            assert {(w, h) for w, h, _ in late} == {(VIDEO_W, VIDEO_H)}
            off = [px for _, _, px in late if not colour_close(px, VIDEO_RGBA, COLOUR_TOLERANCE)]
            assert not off, f"{len(off)} of carol's frames off colour: {off[:5]}"
        finally:
            await sender.stop()


SIMULCAST_W, SIMULCAST_H = 1280, 720  # the SDK sends 320x180, 640x360 and 1280x720 layers
LOW_W, LOW_H = 320, 180


# What the Python SDK sends of a 1280x720 track published with simulcast: three layers
# of VP8 and H.264, but only the full-size one of VP9 and AV1 (it announces three).
SIMULCAST_RIDS = {"vp8": {"q", "h", "f"}, "h264": {"q", "h", "f"}, "vp9": {"f"}, "av1": {"f"}}


async def rids_sent(track: rtc.LocalVideoTrack) -> set[str]:
    return {rid for rid, frames in (await frames_encoded_by_rid(track)).items() if frames > 0}


@pytest.mark.parametrize("codec_name", list(VIDEO_CODECS))
async def test_simulcast_video_follows_the_subscribers_quality(server: Server, codec_name: str) -> None:
    """SDKs publish simulcast by default: the subscriber gets one layer, the best one
    unless it asks for less, and moves to the layer it asks for, at that codec's
    keyframes. Where the publisher sends only its top layer (the Python SDK's VP9 and
    AV1), asking for less keeps that layer coming, as upstream does, rather than none."""
    codec, mime = VIDEO_CODECS[codec_name]
    sent = SIMULCAST_RIDS[codec_name]
    low_w, low_h = (LOW_W, LOW_H) if len(sent) > 1 else (SIMULCAST_W, SIMULCAST_H)
    room = unique(f"simulcast-{codec_name}")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")
        sender = SolidVideoSender(SIMULCAST_W, SIMULCAST_H, VIDEO_RGBA, name="cam").start()
        stream = None
        try:
            options = rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA,
                simulcast=True,
                video_codec=codec,
            )
            publication = await publish_track(alice, sender.track, options)
            subscribed = await wait_track_subscribed(bob, publication.sid)
            track, pub, _ = subscribed.args
            assert pub.simulcasted, "published with simulcast, yet not marked simulcasted"
            assert pub.mime_type.lower() == mime, f"track mime type {pub.mime_type!r}, want {mime}"
            stream = rtc.VideoStream(track)
            frames: list[tuple[int, int, tuple[int, int, int, int]]] = []
            asked_low_at: list[int] = []

            async def read() -> None:
                async for event in stream:
                    f = event.frame
                    frames.append((f.width, f.height, centre_rgba(f)))
                    if not asked_low_at and frames[-10:] == [
                        (SIMULCAST_W, SIMULCAST_H, frames[-1][2])
                    ] * 10:
                        # Ten full-size frames in a row: now ask for the lowest layer.
                        asked_low_at.append(len(frames))
                        pub.set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
                    if asked_low_at and sum(
                        (w, h) == (low_w, low_h) for w, h, _ in frames[asked_low_at[0] :]
                    ) >= 20:
                        return

            try:
                await asyncio.wait_for(read(), MEDIA_TIMEOUT * 2)
            except asyncio.TimeoutError:
                pass
            sizes = [(w, h) for w, h, _ in frames]
            assert asked_low_at, (
                f"no run of 10 full-size frames among {len(frames)} decoded: {sorted(set(sizes))}"
            )
            assert await rids_sent(sender.track) == sent, "the layers the SDK sends changed"
            after = sizes[asked_low_at[0] :]
            assert after.count((low_w, low_h)) >= 20, (
                f"after asking for LOW, {after.count((low_w, low_h))} frames of {low_w}x{low_h} "
                f"among {len(after)}"
            )
            # Once on the low layer, it stays there: one layer at a time, no flapping.
            first_low = after.index((low_w, low_h))
            assert set(after[first_low:]) == {(low_w, low_h)}, sorted(set(after[first_low:]))
            off = [px for _, _, px in frames if not colour_close(px, VIDEO_RGBA, COLOUR_TOLERANCE)]
            assert not off, f"{len(off)} of {len(frames)} frames have the wrong colour: {off[:5]}"
        finally:
            if stream is not None:
                try:
                    await asyncio.wait_for(stream.aclose(), 5)
                except Exception:
                    pass
            await sender.stop()


async def test_audio_fans_out_to_an_early_and_a_late_subscriber(server: Server) -> None:
    room = unique("fanout")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")

        sender, publication = await publish_tone(alice)
        probes: list[AudioProbe] = []
        try:
            # bob was there when alice published
            bob_sub = await wait_track_subscribed(bob, publication.sid)
            probes.append(AudioProbe(bob_sub.args[0], "bob (joined before the publication)"))

            # carol joins after it: she finds the track in her JoinResponse
            carol = await clients.join(room, "carol")
            pub = await wait_until(
                lambda: remote_publication(carol, "alice", publication.sid),
                what="carol to find alice's track when she joins",
            )
            assert pub.kind == rtc.TrackKind.KIND_AUDIO and pub.name == "tone"
            carol_sub = await wait_track_subscribed(carol, publication.sid)
            assert carol_sub.participant.identity == "alice"
            probes.append(AudioProbe(carol_sub.args[0], "carol (joined after the publication)"))

            # both hear it at the same time, after carol's arrival
            since = asyncio.get_running_loop().time()
            await asyncio.gather(
                *(
                    p.wait_for_tone(
                        TONE_HZ, min_seconds=TONE_SECONDS, since=since, what="alice's tone"
                    )
                    for p in probes
                )
            )
            sender.check()
        finally:
            for p in probes:
                await p.close()
            await sender.stop()


# --------------------------------------------------------------------------
# data packets


async def test_reliable_data_arrives_complete_and_in_order(server: Server) -> None:
    room = unique("data")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")

        sent = [f"message {i:04d} from alice".encode() for i in range(DATA_MESSAGES)]
        # The first publish_data opens alice's publisher connection (data
        # channels "_reliable" and "_lossy") and waits for it, up to 15 s.
        for i, payload in enumerate(sent):
            await within(
                alice.room.local_participant.publish_data(payload, reliable=True, topic="seq"),
                DATA_TIMEOUT,
                f"alice's publish_data of message {i}",
            )

        try:
            await wait_until(
                lambda: len(bob.seen("data_received")) >= DATA_MESSAGES,
                timeout=DATA_TIMEOUT,
                what=f"bob to receive {DATA_MESSAGES} data packets",
            )
        except AssertionError as e:
            raise AssertionError(f"{e}: he got {len(bob.seen('data_received'))}") from None
        await asyncio.sleep(0.5)  # nothing more (no duplicates) may follow
        packets = [e.args[0] for e in bob.seen("data_received")]
        got = [p.data for p in packets]
        assert len(got) == DATA_MESSAGES, f"bob got {len(got)} packets for {DATA_MESSAGES} sent"
        if got != sent:
            first_bad = next(i for i, (g, s) in enumerate(zip(got, sent)) if g != s)
            raise AssertionError(
                f"packet {first_bad} is {got[first_bad]!r}, want {sent[first_bad]!r}: "
                "reliable data must arrive complete and in order"
            )
        senders = {p.participant.identity if p.participant else None for p in packets}
        assert senders == {"alice"}, (
            f"sender identities {senders}: the forwarded DataPacket must name alice "
            "(participant_identity / participant_sid)"
        )
        assert {p.topic for p in packets} == {"seq"}
        assert {p.kind for p in packets} == {rtc.DataPacketKind.KIND_RELIABLE}
        assert not alice.seen("data_received"), "alice got her own data back"


async def test_lossy_data_arrives_marked_lossy(server: Server) -> None:
    """The `_lossy` channel is relayed on the receivers' `_lossy` channels; on loopback
    nothing is lost."""
    room = unique("lossy")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")
        sent = [f"lossy {i:03d}".encode() for i in range(50)]
        for payload in sent:
            await within(
                alice.room.local_participant.publish_data(payload, reliable=False, topic="fast"),
                DATA_TIMEOUT,
                "alice's lossy publish_data",
            )
            await asyncio.sleep(0.01)
        await wait_until(
            lambda: len(bob.seen("data_received")) >= len(sent),
            timeout=DATA_TIMEOUT,
            what="bob to receive the lossy packets",
        )
        packets = [e.args[0] for e in bob.seen("data_received")]
        assert sorted(p.data for p in packets) == sent
        assert {p.kind for p in packets} == {rtc.DataPacketKind.KIND_LOSSY}
        assert {p.participant.identity for p in packets if p.participant} == {"alice"}


async def test_room_service_send_data_reaches_the_named_participants(server: Server) -> None:
    room = unique("send-data")
    async with Clients(server) as clients, server.api() as lk:
        bob = await clients.join(room, "bob")
        carol = await clients.join(room, "carol")
        await wait_until(lambda: "carol" in bob.room.remote_participants, what="bob to see carol")
        await lk.room.send_data(
            api.SendDataRequest(
                room=room, data=b"to carol", destination_identities=["carol"], topic="admin"
            )
        )
        await lk.room.send_data(api.SendDataRequest(room=room, data=b"to all", topic="admin"))
        await wait_until(
            lambda: len(bob.seen("data_received")) >= 1 and len(carol.seen("data_received")) >= 2,
            timeout=DATA_TIMEOUT,
            what="the server's data packets to arrive",
        )
        await asyncio.sleep(0.5)
        assert [e.args[0].data for e in carol.seen("data_received")] == [b"to carol", b"to all"]
        assert [e.args[0].data for e in bob.seen("data_received")] == [b"to all"]
        assert {e.args[0].topic for e in carol.seen("data_received")} == {"admin"}


async def test_client_unsubscribe_stops_the_track(server: Server) -> None:
    """The subscriber's own UpdateSubscription (set_subscribed(False)) stops the audio
    reaching it while another subscriber keeps hearing it; set_subscribed(True) brings
    it back."""
    room = unique("client-unsub")
    probes: list[AudioProbe] = []
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        carol = await clients.join(room, "carol")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")
        sender, publication = await publish_tone(alice)
        loop = asyncio.get_running_loop()
        try:
            for c in (bob, carol):
                sub = await wait_track_subscribed(c, publication.sid)
                probes.append(AudioProbe(sub.args[0], c.label))
                await probes[-1].wait_for_tone(TONE_HZ, min_seconds=0.5, what=f"the tone at {c.label}")
            remote_pub = bob.room.remote_participants["alice"].track_publications[publication.sid]
            remote_pub.set_subscribed(False)
            off_at = loop.time()
            await wait_until(
                lambda: any(
                    e.name == "track_unsubscribed" and e.args[1].sid == publication.sid
                    for e in bob.events
                ),
                timeout=SUBSCRIBE_TIMEOUT,
                what="bob's track_unsubscribed after set_subscribed(False)",
            )
            assert publication.sid in bob.room.remote_participants["alice"].track_publications
            # The SDK ends the local track at once; what the server still sends shows in
            # bob's inbound audio counters, which must stop growing.
            await wait_until(
                inbound_audio_stopped(bob),
                timeout=SUBSCRIBE_TIMEOUT,
                interval=0.5,
                what="the server to stop sending alice's audio to bob",
            )
            assert probes[1].report(off_at).has_tone(TONE_HZ, min_seconds=0.5), (
                f"carol stopped hearing alice too: {probes[1].report(off_at).describe()}"
            )

            # Subscribing again: the server sends the track again on its m-line. (The
            # python SDK 1.2.1 does not hand the resumed track to the app: no second
            # track_subscribed, so what arrives is counted in its RTP stats.)
            stopped = await inbound_audio_packets(bob)
            remote_pub.set_subscribed(True)
            await wait_until(
                lambda: inbound_audio_grew(bob, stopped, by=100),
                timeout=SUBSCRIBE_TIMEOUT,
                what="alice's audio to reach bob again after set_subscribed(True)",
            )
            sender.check()
        finally:
            for p in probes:
                await p.close()
            await sender.stop()


async def inbound_audio_packets(client: Client) -> int:
    """Audio RTP packets the client's subscriber connection received, over all streams."""
    stats = await client.room.get_rtc_stats()
    return sum(
        s.inbound_rtp.received.packets_received
        for s in stats.subscriber_stats
        if s.HasField("inbound_rtp") and s.inbound_rtp.stream.kind == "audio"
    )


async def inbound_audio_grew(client: Client, since: int, *, by: int) -> bool:
    return await inbound_audio_packets(client) >= since + by


def inbound_audio_stopped(client: Client) -> Callable[[], Awaitable[bool]]:
    """A probe for wait_until: true once the client's inbound audio packet count did not
    move between two calls."""
    last: list[int] = []

    async def stopped() -> bool:
        received = await inbound_audio_packets(client)
        done = bool(last) and received == last[-1]
        last.append(received)
        return done

    return stopped


async def test_data_goes_only_to_its_destination_identities(server: Server) -> None:
    room = unique("data-dest")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        carol = await clients.join(room, "carol")
        for c in (bob, carol):
            await wait_until(
                lambda c=c: "alice" in c.room.remote_participants, what=f"{c.label} to see alice"
            )
        me = alice.room.local_participant

        await within(
            me.publish_data(
                b"for carol only", reliable=True, destination_identities=["carol"], topic="dm"
            ),
            DATA_TIMEOUT,
            "publish_data to carol",
        )
        # a positive control, sent after it on the same ordered channel: once
        # bob has it, the private packet would have reached him before it
        await within(
            me.publish_data(b"for everyone", reliable=True, topic="all"),
            DATA_TIMEOUT,
            "publish_data to everyone",
        )

        got = await wait_until(
            lambda: data_from(carol, "alice", "dm"),
            timeout=DATA_TIMEOUT,
            what="carol to get the packet sent to her",
        )
        assert [p.data for p in got] == [b"for carol only"]
        await wait_until(
            lambda: data_from(bob, "alice", "all"),
            timeout=DATA_TIMEOUT,
            what="bob to get the broadcast packet",
        )
        await wait_until(
            lambda: data_from(carol, "alice", "all"),
            timeout=DATA_TIMEOUT,
            what="carol to get the broadcast packet",
        )
        await asyncio.sleep(SETTLE)

        bob_got = [(p.topic, p.data) for p in data_from(bob, "alice")]
        assert bob_got == [
            ("all", b"for everyone")
        ], f"bob got {bob_got}: a packet with destination_identities=['carol'] must not reach him"
        assert [(p.topic, p.data) for p in data_from(carol, "alice")] == [
            ("dm", b"for carol only"),
            ("all", b"for everyone"),
        ]


# --------------------------------------------------------------------------
# track state


async def test_mute_and_unmute_reach_the_other_participant(server: Server) -> None:
    room = unique("mute")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")

        sender, publication = await publish_tone(alice)
        try:
            sid = publication.sid
            # muting is signalling only: the publication (ParticipantUpdate) is enough
            await bob.wait_event(
                "track_published",
                lambda e: e.args[0].sid == sid,
                timeout=SUBSCRIBE_TIMEOUT,
                what="bob to see alice's track published",
            )
            assert not remote_publication(bob, "alice", sid).muted

            sender.track.mute()  # the SDK sends MuteTrackRequest{sid, muted: true}
            ev = await bob.wait_event(
                "track_muted",
                lambda e: e.args[1].sid == sid,
                what="bob to see alice's track muted (TrackInfo.muted in a ParticipantUpdate)",
            )
            assert ev.participant.identity == "alice"
            assert remote_publication(bob, "alice", sid).muted
            async with server.api() as lk:

                async def muted_on_server(want: bool) -> bool:
                    info = await lk.room.get_participant(
                        api.RoomParticipantIdentity(room=room, identity="alice")
                    )
                    return any(t.sid == sid and t.muted == want for t in info.tracks)

                await wait_until(
                    lambda: muted_on_server(True), what="GetParticipant to show the track muted"
                )

                sender.track.unmute()
                ev = await bob.wait_event(
                    "track_unmuted",
                    lambda e: e.args[1].sid == sid,
                    what="bob to see alice's track unmuted",
                )
                assert ev.participant.identity == "alice"
                assert not remote_publication(bob, "alice", sid).muted
                await wait_until(
                    lambda: muted_on_server(False), what="GetParticipant to show the track unmuted"
                )
            assert len(bob.seen("track_muted")) == 1 and len(bob.seen("track_unmuted")) == 1
        finally:
            await sender.stop()


async def _unsubscribe_bob(
    clients: Clients, lk: api.LiveKitAPI, probes: list[AudioProbe]
) -> tuple[str, str, ToneSender, Client]:
    """alice publishes a tone, bob hears it, then RoomService.UpdateSubscriptions
    (subscribe=False) for bob must stop it reaching him, while the track stays
    published. Returns the room, the track sid, the running sender and bob.

    The python SDK (its Rust core) emits `track_unsubscribed` only when the
    *client* unsubscribes, when the track is unpublished or its publisher
    leaves, or when a new media track replaces the old one; it ignores
    libwebrtc's OnRemoveTrack. A server-side unsubscription (the subscriber
    offer no longer sending the track) therefore shows up as the media
    stopping, which is what is checked; a `track_unsubscribed` is allowed but
    not required.
    """
    room = unique("unsub")
    alice = await clients.join(room, "alice")
    bob = await clients.join(room, "bob")
    carol = await clients.join(room, "carol")  # stays subscribed: the positive control
    await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")

    sender, publication = await publish_tone(alice)
    sid = publication.sid
    try:
        sub = await wait_track_subscribed(bob, sid)
        probes.append(AudioProbe(sub.args[0], "bob"))
        control = await wait_track_subscribed(carol, sid)
        probes.append(AudioProbe(control.args[0], "carol"))
        for p in probes:
            await p.wait_for_tone(
                TONE_HZ, min_seconds=0.5, what=f"alice's tone at {p.label} before unsubscribing"
            )

        await lk.room.update_subscriptions(
            api.UpdateSubscriptionsRequest(
                room=room, identity="bob", track_sids=[sid], subscribe=False
            )
        )
        off_at = asyncio.get_running_loop().time()
        await probes[0].wait_for_silence(
            since=off_at,
            subscriber=bob,
            control=probes[1],
            frequency=TONE_HZ,
            what="UpdateSubscriptions(subscribe=False) to stop alice's audio to bob",
        )
        sender.check()
        assert (
            remote_publication(bob, "alice", sid) is not None
        ), "after the unsubscription bob must still see alice's track as published"
        assert not bob.seen(
            "track_unpublished"
        ), "unsubscribing bob must not unpublish alice's track"
    except BaseException:
        await sender.stop()
        raise
    return room, sid, sender, bob


async def test_update_subscriptions_false_stops_forwarding(server: Server) -> None:
    probes: list[AudioProbe] = []
    async with Clients(server) as clients, server.api() as lk:
        try:
            _, _, sender, _ = await _unsubscribe_bob(clients, lk, probes)
            await sender.stop()
        finally:
            for p in probes:
                await p.close()


async def test_unpublish_reaches_the_other_participant(server: Server) -> None:
    room = unique("unpub")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")

        sender, publication = await publish_tone(alice)
        try:
            sid = publication.sid
            await bob.wait_event(
                "track_published",
                lambda e: e.args[0].sid == sid,
                timeout=SUBSCRIBE_TIMEOUT,
                what="bob to see alice's track published",
            )
            async with server.api() as lk:

                async def alice_tracks() -> list[str]:
                    info = await lk.room.get_participant(
                        api.RoomParticipantIdentity(room=room, identity="alice")
                    )
                    return [t.sid for t in info.tracks]

                async def listed() -> bool:
                    return sid in await alice_tracks()

                async def dropped() -> bool:
                    return sid not in await alice_tracks()

                await wait_until(listed, what="GetParticipant to list alice's track")

                # The SDK sends no signal message for this: it removes the
                # sender and renegotiates, so the server learns it from the
                # publisher's next offer.
                await within(
                    alice.room.local_participant.unpublish_track(sid),
                    EVENT_TIMEOUT,
                    "unpublish_track",
                )
                ev = await bob.wait_event(
                    "track_unpublished",
                    lambda e: e.args[0].sid == sid,
                    timeout=SUBSCRIBE_TIMEOUT,
                    what="bob to see alice's track unpublished",
                )
                assert ev.participant.identity == "alice"
                assert remote_publication(bob, "alice", sid) is None
                await wait_until(dropped, what="GetParticipant to drop alice's track")
            assert alice.room.isconnected() and bob.room.isconnected()
            assert (
                "alice" in bob.room.remote_participants
            ), "unpublishing must not look like leaving"
        finally:
            await sender.stop()


async def test_update_subscriptions_true_resumes_forwarding(server: Server) -> None:
    """After subscribe=False, subscribe=True brings alice's audio back to bob
    (the server reactivates the m-section it had; the SDK emits track_subscribed
    again).

    Careful: a subscriber offer that repeats an a=msid of another m-section
    (say an old inactive one) makes the SDK panic while parsing it, which
    aborts the whole test process.
    """
    probes: list[AudioProbe] = []
    loop = asyncio.get_running_loop()
    async with Clients(server) as clients, server.api() as lk:
        sender = None
        try:
            room, sid, sender, bob = await _unsubscribe_bob(clients, lk, probes)
            events_before = len(bob.events)
            await lk.room.update_subscriptions(
                api.UpdateSubscriptionsRequest(
                    room=room, identity="bob", track_sids=[sid], subscribe=True
                )
            )
            on_at = loop.time()

            async def tone_back() -> bool:
                for e in bob.events[events_before:]:
                    if (
                        e.name == "track_subscribed"
                        and e.args[1].sid == sid
                        and all(p.track is not e.args[0] for p in probes)
                    ):
                        probes.append(AudioProbe(e.args[0], "bob (track subscribed again)"))
                return any(p.report(on_at).has_tone(TONE_HZ, min_seconds=0.5) for p in probes)

            try:
                await wait_until(
                    tone_back,
                    timeout=SUBSCRIBE_TIMEOUT + MEDIA_TIMEOUT,
                    interval=0.1,
                    what="alice's tone to reach bob again after UpdateSubscriptions(subscribe=True)",
                )
            except AssertionError as e:
                reports = "; ".join(f"{p.label}: {p.report(on_at).describe()}" for p in probes)
                raise AssertionError(f"{e}: {reports}") from None
            sender.check()
        finally:
            for p in probes:
                await p.close()
            if sender is not None:
                await sender.stop()


async def test_revoked_permissions_end_publishing_and_subscribing(server: Server) -> None:
    """UpdateParticipant taking canPublish away unpublishes the tracks already published
    (bob sees them go); taking canSubscribe away stops what reaches the subscriber."""
    room = unique("revoke")
    probes: list[AudioProbe] = []
    async with Clients(server) as clients, server.api() as lk:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        carol = await clients.join(room, "carol")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")
        sender, publication = await publish_tone(alice)
        try:
            sub = await wait_track_subscribed(carol, publication.sid)
            probes.append(AudioProbe(sub.args[0], "carol"))
            await probes[0].wait_for_tone(TONE_HZ, min_seconds=0.5, what="alice's tone at carol")
            control = await wait_track_subscribed(bob, publication.sid)
            probes.append(AudioProbe(control.args[0], "bob"))

            # carol may no longer subscribe: the tone stops reaching her, alice still publishes.
            await lk.room.update_participant(
                api.UpdateParticipantRequest(
                    room=room, identity="carol",
                    permission=api.ParticipantPermission(can_subscribe=False, can_publish=True),
                )
            )
            off_at = asyncio.get_running_loop().time()
            await probes[0].wait_for_silence(
                since=off_at, subscriber=carol, control=probes[1], frequency=TONE_HZ,
                what="carol's audio to stop",
            )
            assert remote_publication(bob, "alice", publication.sid) is not None

            # alice may no longer publish: her track ends for everyone.
            await lk.room.update_participant(
                api.UpdateParticipantRequest(
                    room=room, identity="alice",
                    permission=api.ParticipantPermission(can_subscribe=True, can_publish=False),
                )
            )
            await wait_until(
                lambda: remote_publication(bob, "alice", publication.sid) is None,
                timeout=EVENT_TIMEOUT,
                what="alice's track to be unpublished for bob",
            )
            info = await lk.room.get_participant(
                api.RoomParticipantIdentity(room=room, identity="alice")
            )
            assert not info.tracks, f"alice still lists {[t.sid for t in info.tracks]}"
        finally:
            for p in probes:
                await p.close()
            await sender.stop()



async def test_room_service_send_data_by_destination_sid(server: Server) -> None:
    room = unique("send-data-sid")
    async with Clients(server) as clients, server.api() as lk:
        bob = await clients.join(room, "bob")
        carol = await clients.join(room, "carol")
        await wait_until(lambda: "carol" in bob.room.remote_participants, what="bob to see carol")
        carol_sid = bob.room.remote_participants["carol"].sid
        await lk.room.send_data(
            api.SendDataRequest(room=room, data=b"by sid", destination_sids=[carol_sid])
        )
        await wait_until(
            lambda: carol.seen("data_received"), timeout=DATA_TIMEOUT, what="carol's packet"
        )
        await asyncio.sleep(SETTLE)
        assert [e.args[0].data for e in carol.seen("data_received")] == [b"by sid"]
        assert not bob.seen("data_received"), "the packet named only carol's sid"


async def test_data_without_can_publish_data_is_dropped(server: Server) -> None:
    room = unique("data-denied")
    async with Clients(server) as clients:
        token = (
            api.AccessToken(server.api_key, server.api_secret)
            .with_identity("mute-data")
            .with_grants(api.VideoGrants(room_join=True, room=room, can_publish_data=False))
            .to_jwt()
        )
        sender = await clients.join_with_token(token, "mute-data")
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(
            lambda: "mute-data" in bob.room.remote_participants, what="bob to see the sender"
        )
        sent_before = await sender.data_messages_sent()
        # The SDK does not check the grant itself: the packet leaves the client and
        # only the server can drop it.
        await within(
            sender.room.local_participant.publish_data(b"denied", reliable=True),
            DATA_TIMEOUT,
            "the sender's publish_data",
        )

        async def left_the_sender() -> bool:
            return await sender.data_messages_sent() > sent_before

        await wait_until(
            left_the_sender,
            timeout=DATA_TIMEOUT,
            what="the denied packet to leave the sender",
        )
        await within(
            alice.room.local_participant.publish_data(b"allowed", reliable=True),
            DATA_TIMEOUT,
            "alice's publish_data",
        )
        await wait_until(lambda: bob.seen("data_received"), timeout=DATA_TIMEOUT, what="alice's data")
        await asyncio.sleep(SETTLE)
        assert [e.args[0].data for e in bob.seen("data_received")] == [b"allowed"]


async def test_a_publishers_tracks_end_when_it_leaves(server: Server) -> None:
    room = unique("leaver-tracks")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        sender, publication = await publish_tone(alice)
        try:
            await wait_track_subscribed(bob, publication.sid)
            async with server.api() as lk:
                rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
            assert rooms.rooms[0].num_publishers == 1, rooms
            await alice.room.disconnect()
            await wait_until(
                lambda: "alice" not in bob.room.remote_participants,
                timeout=EVENT_TIMEOUT,
                what="bob to see alice leave",
            )
            async with server.api() as lk:
                rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
                people = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
            assert [p.identity for p in people.participants] == ["bob"]
            assert rooms.rooms and rooms.rooms[0].num_publishers == 0
        finally:
            await sender.stop()


@pytest.mark.parametrize("remote_unmute", [False, True], ids=["default", "enabled"])
async def test_room_service_mutes_a_published_track(tmp_path, remote_unmute: bool) -> None:
    """MutePublishedTrack mutes for everyone (the publisher's SDK is told to mute); unmuting
    from the server needs `room.enable_remote_unmute`, as upstream."""
    args = ["--config-body", "room:\n  enable_remote_unmute: true\n"] if remote_unmute else []
    server = Server(tmp_path / "mute.log", args).start()
    try:
        room = unique("remote-mute")
        async with Clients(server) as clients, server.api() as lk:
            alice = await clients.join(room, "alice")
            bob = await clients.join(room, "bob")
            sender, publication = await publish_tone(alice)
            try:
                await wait_track_subscribed(bob, publication.sid)
                track = await lk.room.mute_published_track(
                    api.MuteRoomTrackRequest(
                        room=room, identity="alice", track_sid=publication.sid, muted=True
                    )
                )
                assert track.track.muted and track.track.sid == publication.sid
                await wait_until(
                    lambda: bob.seen("track_muted"), timeout=EVENT_TIMEOUT, what="bob to see the mute"
                )
                await wait_until(
                    lambda: publication.muted, timeout=EVENT_TIMEOUT, what="alice's SDK to mute"
                )
                unmute = api.MuteRoomTrackRequest(
                    room=room, identity="alice", track_sid=publication.sid, muted=False
                )
                if remote_unmute:
                    assert not (await lk.room.mute_published_track(unmute)).track.muted
                    await wait_until(
                        lambda: bob.seen("track_unmuted"), timeout=EVENT_TIMEOUT, what="the unmute"
                    )
                else:
                    with pytest.raises(api.TwirpError) as refused:
                        await lk.room.mute_published_track(unmute)
                    assert "remote unmute" in str(refused.value)
                    await asyncio.sleep(SETTLE)
                    assert not bob.seen("track_unmuted")
            finally:
                await sender.stop()
    finally:
        server.stop()


async def test_active_speakers_follow_the_audio(server: Server) -> None:
    """SpeakersChanged from the audio level of published audio: alice's tone makes her the
    active speaker for bob; muting it ends that."""
    room = unique("speakers")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        carol = await clients.join(room, "carol")  # publishes nothing: never a speaker

        def speakers(c: Client = bob) -> list[str]:
            """The active speakers as of the last `active_speakers_changed`."""
            events = c.seen("active_speakers_changed")
            return [p.identity for p in events[-1].args[0]] if events else []

        sender, publication = await publish_tone(alice)
        try:
            await wait_track_subscribed(bob, publication.sid)
            await wait_until(
                lambda: speakers() == ["alice"], timeout=EVENT_TIMEOUT, what="alice to speak"
            )
            await wait_until(lambda: speakers(carol) == ["alice"], what="carol to be told too")
            sender.track.mute()
            await wait_until(
                lambda: speakers() == [], timeout=EVENT_TIMEOUT, what="alice to stop speaking"
            )
        finally:
            await sender.stop()


async def frames_encoded_by_rid(track: rtc.LocalVideoTrack) -> dict[str, int]:
    stats = await track.get_stats()
    return {
        s.outbound_rtp.outbound.rid: s.outbound_rtp.outbound.frames_encoded
        for s in stats
        if s.HasField("outbound_rtp") and s.outbound_rtp.outbound.rid
    }


async def test_dynacast_stops_the_layers_nobody_receives(server: Server) -> None:
    """SubscribedQualityUpdate: a publisher with dynacast on stops encoding the layers no
    subscriber receives, and starts again when one asks for them."""
    room = unique("dynacast")
    async with Clients(server) as clients:
        alice = clients.new("alice")
        await alice.connect(
            server.ws_url, server.token("alice", room), options=rtc.RoomOptions(dynacast=True)
        )
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")
        sender = SolidVideoSender(SIMULCAST_W, SIMULCAST_H, VIDEO_RGBA, name="cam").start()
        try:
            options = rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True, video_codec=rtc.VideoCodec.VP8
            )
            publication = await publish_track(alice, sender.track, options)
            subscribed = await wait_track_subscribed(bob, publication.sid)
            track = sender.track

            async def growing(rid: str, seconds: float = 1.5) -> bool:
                before = (await frames_encoded_by_rid(track)).get(rid, 0)
                await asyncio.sleep(seconds)
                return (await frames_encoded_by_rid(track)).get(rid, 0) > before

            await wait_until(lambda: growing("f"), timeout=MEDIA_TIMEOUT, what="f to be encoded")
            subscribed.args[1].set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_LOW)
            # Bob takes only q now: the publisher is told, and stops h and f.
            async def f_stopped() -> bool:
                return not await growing("f")

            await wait_until(f_stopped, timeout=MEDIA_TIMEOUT, what="f to stop being encoded")
            assert await growing("q"), "q keeps being encoded for bob"
            subscribed.args[1].set_video_quality(rtc.VideoQuality.VIDEO_QUALITY_HIGH)
            await wait_until(lambda: growing("f"), timeout=MEDIA_TIMEOUT, what="f to come back")
        finally:
            await sender.stop()


async def test_grants_limit_subscribing_and_the_sources_one_may_publish(server: Server) -> None:
    """`canSubscribe: false` gets no media (while a normal subscriber hears the tone), and
    `canPublishSources: [microphone]` may publish a microphone but not a camera."""
    room = unique("grants")

    def token(identity: str, **grants: object) -> str:
        return (
            api.AccessToken(server.api_key, server.api_secret)
            .with_identity(identity)
            .with_grants(api.VideoGrants(room_join=True, room=room, **grants))
            .to_jwt()
        )

    async with Clients(server) as clients, server.api() as lk:
        watcher = await clients.join_with_token(token("watcher", can_subscribe=False), "watcher")
        listener = await clients.join(room, "listener")
        speaker = await clients.join_with_token(token("speaker", can_publish_sources=["microphone"]), "speaker")
        sender, publication = await publish_tone(speaker)
        probe = None
        video = SolidVideoSender(VIDEO_W, VIDEO_H, VIDEO_RGBA, name="cam").start()
        try:
            sub = await wait_track_subscribed(listener, publication.sid)
            probe = AudioProbe(sub.args[0], "listener")
            await probe.wait_for_tone(TONE_HZ, min_seconds=TONE_SECONDS, what="the tone at the listener")
            await watcher.wait_event(
                "track_published", lambda e: e.args[0].sid == publication.sid, what="the watcher to see the track"
            )
            await asyncio.sleep(SETTLE)
            assert not watcher.seen("track_subscribed"), "a participant without canSubscribe got a track"
            assert await inbound_audio_packets(watcher) == 0, "media reached a participant without canSubscribe"

            try:
                await speaker.room.local_participant.publish_track(video.track, video_options())
            except Exception:
                pass  # the SDK gives up after its own timeout; what counts is the server's view
            else:
                raise AssertionError("a camera was published with canPublishSources: [microphone]")
            info = await lk.room.get_participant(api.RoomParticipantIdentity(room=room, identity="speaker"))
            assert [t.source for t in info.tracks] == [models.TrackSource.MICROPHONE], info.tracks
        finally:
            if probe is not None:
                await probe.close()
            await sender.stop()
            await video.stop()
