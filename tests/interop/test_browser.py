"""The JS SDK (livekit-client) in Chromium against the server, meeting the
python SDK: connect, publish from the browser, subscribe in the browser.

Chromium runs headless with fake camera and microphone devices, driven by
tests/browser/driver.mjs through playwright-core (see browser.py and
tests/browser/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import collections
import time

import pytest
from livekit import rtc
from livekit.rtc.participant import PublishTrackError

from browser import PAGE_TONE_HZ, Browsers, Page, PageError
from harness import (
    CONNECT_TIMEOUT,
    EVENT_TIMEOUT,
    AudioProbe,
    Clients,
    Server,
    http_request,
    unique,
    wait_until,
)

FRAMES = 20  # decoded video frames that prove media flows
MEDIA_TIMEOUT = 30.0  # seconds from subscribing to FRAMES decoded frames
PUBLISH_TIMEOUT = 30.0  # seconds for the page to publish camera + microphone

# What the page publishes: one VP8 layer from Chromium's fake camera.
PAGE_VIDEO = {"width": 640, "height": 360, "frameRate": 24, "codec": "vp8", "simulcast": False}

# What python publishes to the page.
PY_WIDTH, PY_HEIGHT, PY_FPS = 320, 240, 20


async def test_chromium_decodes_its_own_camera_over_loopback(browsers: Browsers) -> None:
    """The test machinery alone, no server: Chromium sends its fake camera
    from one peer connection to another in the page, over host candidates on
    the namespace's 127.0.0.2, and decodes it. When this passes and the tests
    below fail, look at the server."""
    async with browsers:
        page = await browsers.open("selftest")
        result = await page.call("loopbackSelfTest", {"frames": FRAMES}, 20_000, timeout=25)
        assert result["inbound"]["framesDecoded"] >= FRAMES, result
        assert any(" 127.0.0.2 " in c and "typ host" in c for c in result["candidates"]), (
            f"Chromium offered no host candidate on 127.0.0.2: {result['candidates']}"
        )


# The page's origin (http://127.0.0.1:<port>) is not the server's, as for any
# real application: the browser lets the page read an HTTP answer of the
# server's only if it allows that origin.
PAGE_ORIGIN = "http://127.0.0.1:8080"


@pytest.mark.parametrize("path", ["/rtc/validate", "/rtc/v1/validate"])
def test_validate_answers_cross_origin_requests(server: Server, path: str) -> None:
    """livekit-client tries /rtc/v1 first; when the WebSocket fails it asks
    /rtc/v1/validate with fetch() and falls back to /rtc only on a 404 that it
    can read. Without Access-Control-Allow-Origin the fetch fails as a network
    error and connect() gives up ("could not establish signal connection:
    Failed to fetch"). livekit-server allows every origin."""
    token = server.token("web", unique("cors"))
    answer = http_request(
        f"{server.http_url}{path}?access_token={token}", headers={"Origin": PAGE_ORIGIN}
    )
    allowed = answer.headers.get("access-control-allow-origin")
    assert allowed in ("*", PAGE_ORIGIN), (
        f"GET {path} from origin {PAGE_ORIGIN} answered {answer.status} without "
        f"Access-Control-Allow-Origin (headers: {answer.headers}); a browser page cannot read it"
    )


async def connect_page(page: Page, server: Server, room: str, identity: str) -> dict:
    try:
        return await page.call(
            "connect", server.ws_url, server.token(identity, room), {}, CONNECT_TIMEOUT * 1000,
            timeout=CONNECT_TIMEOUT + 5,
        )
    except PageError as e:
        if "blocked by CORS policy" in page.log_tail(10_000):
            raise AssertionError(
                f"{e}\nChromium refused to let the page read the server's answer to "
                "/rtc/v1/validate (no Access-Control-Allow-Origin), so livekit-client could not "
                "tell the 404 that makes it fall back to /rtc: see the browser log"
            ) from None
        raise


async def publish_page(page: Page, **opts) -> dict:
    try:
        return await page.call(
            "publish", opts, PUBLISH_TIMEOUT * 1000, timeout=PUBLISH_TIMEOUT + 5
        )
    except PageError as e:
        if "no response from server" in str(e):
            raise AssertionError(
                f"{e}\nlivekit-client sent AddTrackRequest and waited 10 s for the server's "
                "TrackPublishedResponse"
            ) from None
        raise


def connected_pcs(info: dict) -> list[dict]:
    return [pc for pc in info["pcs"] if pc["connection"] == "connected"]


async def test_page_connects_and_meets_a_python_participant(
    server: Server, browsers: Browsers
) -> None:
    room = unique("web-meet")
    async with Clients(server) as clients, browsers:
        py = await clients.join(room, "py", name="Py")
        page = await browsers.open("web")

        joined = await connect_page(page, server, room, "web")
        assert joined["state"] == "connected", joined
        assert joined["roomName"] == room
        assert joined["local"]["identity"] == "web"
        assert joined["local"]["sid"], "the page got no participant sid"
        assert joined["roomSid"], "the page got no room sid"
        # room.connect resolves once the primary peer connection is up: ICE and
        # DTLS have worked between Chromium and the server
        assert connected_pcs(joined), f"no connected peer connection: {joined['pcs']}"

        # the page finds python already there, with its name
        seen = await page.call("waitForParticipant", "py", EVENT_TIMEOUT * 1000)
        assert seen["sid"] == py.room.local_participant.sid
        assert seen["name"] == "Py"

        # python sees the page arrive, as the same participant
        arrived = await py.wait_event(
            "participant_connected",
            lambda e: e.participant.identity == "web",
            what="python to see the page join",
        )
        assert arrived.participant.sid == joined["local"]["sid"]

        # python leaves: the page sees it go
        await py.disconnect()
        await wait_until_page_event(page, "participantDisconnected", "py")

        # the page is still connected afterwards
        state = await page.call("state")
        assert state["state"] == "connected", state


async def wait_until_page_event(page: Page, name: str, identity: str, timeout: float = EVENT_TIMEOUT) -> dict:
    async def seen():
        events = await page.call("events")
        hits = [e for e in events if e["name"] == name and e.get("identity") == identity]
        return hits[0] if hits else None

    return await wait_until(seen, timeout=timeout, what=f"the page to see {name} of {identity}", interval=0.3)


# livekit-client publishes simulcast by default (two layers at 640x360); the subscriber
# must get one of them, decodable.
@pytest.mark.parametrize("simulcast", [False, True], ids=["one-layer", "simulcast"])
async def test_page_publishes_camera_and_microphone_to_python(
    server: Server, browsers: Browsers, simulcast: bool
) -> None:
    room = unique("web-pub")
    async with Clients(server) as clients, browsers:
        sub = await clients.join(room, "py-sub")
        subscribed: dict[str, rtc.Track] = {}

        def on_subscribed(track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
            if p.identity == "web":
                kind = "video" if pub.kind == rtc.TrackKind.KIND_VIDEO else "audio"
                subscribed[kind] = track

        sub.room.on("track_subscribed", on_subscribed)

        page = await browsers.open("web")
        await connect_page(page, server, room, "web")
        published = await publish_page(
            page, camera=True, microphone=True, **{**PAGE_VIDEO, "simulcast": simulcast}
        )
        kinds = sorted(t["kind"] for t in published["tracks"])
        assert kinds == ["audio", "video"], published

        try:
            await wait_until(
                lambda: "video" in subscribed and "audio" in subscribed,
                timeout=MEDIA_TIMEOUT,
                what="python to subscribe to the page's camera and microphone",
            )
        except AssertionError as e:
            raise AssertionError(f"{e}; page sender stats: {await page.call('publisherStats')}") from None

        # The microphone: Chromium's fake device plays the page's tone file.
        probe = AudioProbe(subscribed["audio"], "py-sub")
        stream = rtc.VideoStream(subscribed["video"])
        decoded: list[tuple[int, int]] = []

        async def read_frames() -> None:
            async for ev in stream:
                decoded.append((ev.frame.width, ev.frame.height))

        reader = asyncio.get_running_loop().create_task(read_frames())
        try:
            await probe.wait_for_tone(PAGE_TONE_HZ, min_seconds=1.0, what="the page's microphone at python")
            await wait_until(
                lambda: len(decoded) >= FRAMES,
                timeout=MEDIA_TIMEOUT,
                what=f"python to decode {FRAMES} video frames from the page",
            )

            # Python asked for the best quality: what it decodes must become the largest
            # layer the page sends now (with simulcast, Chromium starts the top layer only
            # once its bandwidth estimate allows, so wait for it).
            async def best_layer_decoded() -> bool:
                sent = await page.call("publisherStats")
                active = [
                    (o["frameWidth"], o["frameHeight"])
                    for t in sent
                    if t["kind"] == "video"
                    for o in (t["stats"] or {}).get("outbound", [])
                    if o.get("frameWidth") and o.get("active", True)
                ]
                return bool(active) and decoded[-1] == max(active)

            try:
                await wait_until(best_layer_decoded, timeout=MEDIA_TIMEOUT, interval=0.5,
                                 what="python to decode the page's largest layer")
            except AssertionError as e:
                raise AssertionError(
                    f"{e}: decoded {collections.Counter(decoded)}; page sends "
                    f"{await page.call('publisherStats')}"
                ) from None
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await stream.aclose()
            await probe.close()
        for w, h in set(decoded):
            assert w <= PAGE_VIDEO["width"] and h <= PAGE_VIDEO["height"], (w, h)
            assert abs(w * 9 - h * 16) <= 16, f"frames of {w}x{h} are not 16:9: {collections.Counter(decoded)}"


async def publish_python_video(room: rtc.Room, stop: asyncio.Event) -> asyncio.Task:
    """Publish a moving test pattern from python; returns the task feeding it."""
    source = rtc.VideoSource(PY_WIDTH, PY_HEIGHT)
    track = rtc.LocalVideoTrack.create_video_track("py-cam", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False)
    try:
        await asyncio.wait_for(room.local_participant.publish_track(track, opts), PUBLISH_TIMEOUT)
    except (asyncio.TimeoutError, PublishTrackError) as e:
        raise AssertionError(
            f"python's publish_track failed ({type(e).__name__}: {e}); it waits for the "
            "server's TrackPublishedResponse to its AddTrackRequest"
        ) from None

    async def feed() -> None:
        n = 0
        stride = PY_WIDTH * 4
        while not stop.is_set():
            buf = bytearray(PY_WIDTH * PY_HEIGHT * 4)
            # a bright bar that moves down the picture, so every frame differs
            row = (n * 4) % PY_HEIGHT
            for y in range(row, min(row + 16, PY_HEIGHT)):
                buf[y * stride:(y + 1) * stride] = b"\xff\x80\x20\xff" * PY_WIDTH
            source.capture_frame(rtc.VideoFrame(PY_WIDTH, PY_HEIGHT, rtc.VideoBufferType.RGBA, buf))
            n += 1
            await asyncio.sleep(1 / PY_FPS)

    return asyncio.create_task(feed())


@contextlib.asynccontextmanager
async def page_seeing_python_video(server: Server, clients: Clients, browsers: Browsers, room: str):
    """A page in `room` (there first, so the track arrives while it is connected)
    and a python participant publishing video to it; yields the page."""
    stop = asyncio.Event()
    feeder = None
    try:
        page = await browsers.open("web")
        await connect_page(page, server, room, "web")
        pub = await clients.join(room, "py-pub")
        feeder = await publish_python_video(pub.room, stop)
        await page.call("waitForParticipant", "py-pub", EVENT_TIMEOUT * 1000)
        yield page
    finally:
        stop.set()
        if feeder is not None:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)


async def frames_from_python(page: Page) -> dict:
    """Waits for the page to subscribe to py-pub's video and decode FRAMES of it; returns
    its inbound stats."""
    await page.call("waitForTrack", "py-pub", "video", MEDIA_TIMEOUT * 1000, timeout=MEDIA_TIMEOUT + 5)
    return await page.call(
        "waitForFramesDecoded", "py-pub", FRAMES, MEDIA_TIMEOUT * 1000, timeout=MEDIA_TIMEOUT + 5
    )


async def test_page_subscribes_to_python_video(server: Server, browsers: Browsers) -> None:
    room = unique("web-sub")
    async with Clients(server) as clients, browsers:
        async with page_seeing_python_video(server, clients, browsers, room) as page:
            t = time.monotonic()
            await page.call("waitForTrack", "py-pub", "video", MEDIA_TIMEOUT * 1000,
                            timeout=MEDIA_TIMEOUT + 5)
            left = max(5.0, MEDIA_TIMEOUT - (time.monotonic() - t))
            stats = await page.call("waitForFramesDecoded", "py-pub", FRAMES, left * 1000,
                                    timeout=left + 5)
            assert stats["framesDecoded"] >= FRAMES, stats
            assert stats["codec"], stats
            w, h = stats["frameWidth"], stats["frameHeight"]
            # python's encoder may scale down under load, never up, keeping 4:3
            assert 0 < w <= PY_WIDTH and 0 < h <= PY_HEIGHT, stats
            assert abs(w * 3 - h * 4) <= 8, f"decoded {w}x{h} is not 4:3: {stats}"


async def test_page_hears_connection_quality_of_itself_and_whom_it_receives(
    server: Server, browsers: Browsers
) -> None:
    """ConnectionQualityUpdate: livekit-client raises ConnectionQualityChanged for the
    local participant and for the publisher it receives, as the server scores them."""
    room = unique("web-quality")
    async with Clients(server) as clients, browsers:
        async with page_seeing_python_video(server, clients, browsers, room) as page:
            await page.call("waitForTrack", "py-pub", "video", MEDIA_TIMEOUT * 1000,
                            timeout=MEDIA_TIMEOUT + 5)

            async def heard() -> dict[str, str]:
                seen = {}
                for e in await page.call("events"):
                    if e["name"] == "connectionQualityChanged":
                        seen[e["identity"]] = e["quality"]
                return seen if {"web", "py-pub"} <= seen.keys() else {}

            # Scored every 5 s; both ends are on loopback with nothing lost.
            seen = await wait_until(heard, timeout=15, interval=0.5,
                                    what="ConnectionQualityChanged for the page and py-pub")
            assert seen == {"web": "excellent", "py-pub": "excellent"}, seen


async def test_page_sees_its_video_paused_for_bandwidth_and_resumed(tmp_path, browsers: Browsers) -> None:
    """With `rtc.congestion_control.allow_pause`, a subscriber whose bandwidth cannot carry
    a video track gets it paused (StreamStateUpdate PAUSED: livekit-client's
    TrackStreamStateChanged), and resumed when it can again. The bandwidth is set with the
    SDK's own hook, `simulateScenario('subscriber-bandwidth', bps)` (0 clears it)."""
    server = Server(
        tmp_path / "server.log", ["--config-body", "rtc: {congestion_control: {allow_pause: true}}"]
    ).start()
    room = unique("web-pause")
    try:
        async with Clients(server) as clients, browsers:
            async with page_seeing_python_video(server, clients, browsers, room) as page:
                await page.call("waitForTrack", "py-pub", "video", MEDIA_TIMEOUT * 1000,
                                timeout=MEDIA_TIMEOUT + 5)
                await page.call("waitForFramesDecoded", "py-pub", FRAMES, MEDIA_TIMEOUT * 1000,
                                timeout=MEDIA_TIMEOUT + 5)

                async def states() -> list[str]:
                    return [e["state"] for e in await page.call("events")
                            if e["name"] == "trackStreamStateChanged" and e["identity"] == "py-pub"]

                async def decoded() -> int:
                    return (await page.call("waitForFramesDecoded", "py-pub", 0, 1000))["framesDecoded"]

                await page.call("simulate", "subscriber-bandwidth", 10_000)
                await wait_until(lambda: _last_is(states, "paused"), timeout=EVENT_TIMEOUT,
                                 what="the page to see py-pub's video paused")
                # Paused means no frames (the next try at the lowest layer is 4 s away).
                before = await decoded()
                await asyncio.sleep(2)
                assert await decoded() <= before + 2, "frames kept coming while paused"

                await page.call("simulate", "subscriber-bandwidth", 0)
                await wait_until(lambda: _last_is(states, "active"), timeout=EVENT_TIMEOUT,
                                 what="the page to see py-pub's video active again")
                resumed = await decoded()
                await page.call("waitForFramesDecoded", "py-pub", resumed + FRAMES,
                                MEDIA_TIMEOUT * 1000, timeout=MEDIA_TIMEOUT + 5)
    finally:
        server.stop()


async def _last_is(states, want: str) -> bool:
    seen = await states()
    return bool(seen) and seen[-1] == want


async def test_page_resubscribing_reuses_its_m_section(server: Server, browsers: Browsers) -> None:
    """Unsubscribing and subscribing again, over and over, brings the video back each
    time on the m-section it had: the subscriber's SDP does not grow with the cycles."""
    room = unique("web-resub")
    async with Clients(server) as clients, browsers:
        async with page_seeing_python_video(server, clients, browsers, room) as page:
            stats = await frames_from_python(page)
            [before] = await page.call("subscriberSession")
            for cycle in range(3):
                await page.call("setSubscribed", "py-pub", "video", False, EVENT_TIMEOUT * 1000)
                await page.call("setSubscribed", "py-pub", "video", True, EVENT_TIMEOUT * 1000)
                # The receiver is the same one, so its decoded-frame count goes on
                # from where it was.
                want = stats["framesDecoded"] + FRAMES
                stats = await page.call("waitForFramesDecoded", "py-pub", want,
                                        MEDIA_TIMEOUT * 1000, timeout=MEDIA_TIMEOUT + 5)
                [now] = await page.call("subscriberSession")
                assert now["mediaSections"] == before["mediaSections"], (
                    f"cycle {cycle}: the subscriber SDP grew from {before} to {now}"
                )
                assert now["transceivers"] == before["transceivers"], (cycle, before, now)
                assert now["receiving"] == before["receiving"], (cycle, before, now)


async def test_page_disabling_a_track_stops_its_media_until_enabled(
    server: Server, browsers: Browsers
) -> None:
    """publication.setEnabled(false) (UpdateTrackSettings.disabled) keeps the subscription
    but the server stops forwarding: the page's received media bytes and frames stop
    growing (BWE padding carries no payload and is not counted), and grow again, decoded,
    after setEnabled(true)."""
    room = unique("web-disable")
    async with Clients(server) as clients, browsers:
        async with page_seeing_python_video(server, clients, browsers, room) as page:
            stats = await frames_from_python(page)
            state = await page.call("setEnabled", "py-pub", "video", False)
            assert state["subscribed"] and not state["enabled"], state

            async def received() -> tuple[int, int]:
                s = (await page.call("receiverStats", "py-pub", "video"))["inbound"]
                return s["bytesReceived"], s["framesReceived"]

            # Stopped: nothing over a second, while python keeps publishing.
            last = [await received()]

            async def still() -> bool:
                await asyncio.sleep(1.0)
                now = await received()
                done = now == last[-1]
                last.append(now)
                return done

            await wait_until(still, timeout=EVENT_TIMEOUT, what=f"the disabled track's media to stop: {last}")
            stopped_at = last[-1]
            await asyncio.sleep(1.0)
            assert await received() == stopped_at, "media arrived for a disabled track"

            await page.call("setEnabled", "py-pub", "video", True)
            after = await page.call("waitForFramesDecoded", "py-pub", stats["framesDecoded"] + FRAMES,
                                    MEDIA_TIMEOUT * 1000, timeout=MEDIA_TIMEOUT + 5)
            assert after["bytesReceived"] > stopped_at[0], after
