"""livekit-client resuming its session in Chromium, driven by its own test hook
(`room.simulateScenario`): the page keeps its participant sid, the python
participant never sees it leave, and the page's camera keeps decoding at the
python side. A resume restarts ICE both ways (the server's new subscriber
offer, the page's own publisher offer).

A resume the client itself fails ('resume-reconnect') ends in a full
reconnect: a new participant sid, which the other side sees as a leave and a
join, and media again.
"""

from __future__ import annotations

import asyncio

from livekit import rtc

from browser import Browsers, Page
from harness import Clients, Client, Server, unique, wait_until
from test_browser import PAGE_VIDEO, connect_page, publish_page

RESUME_TIMEOUT = 30.0
MAX_GAP = 2.0  # seconds without a decoded frame that the python side may see


class FrameClock:
    """Reads a video track in python and keeps when each frame was decoded."""

    def __init__(self, track: rtc.Track) -> None:
        self.stream = rtc.VideoStream(track)
        self.times: list[float] = []
        loop = asyncio.get_running_loop()

        async def run() -> None:
            async for _ in self.stream:
                self.times.append(loop.time())

        self.task = loop.create_task(run())

    def frames_since(self, t: float) -> int:
        return sum(1 for x in self.times if x >= t)

    def longest_gap(self, start: float, end: float) -> float:
        inside = [x for x in self.times if start <= x <= end]
        edges = [start, *inside, end]
        return max(b - a for a, b in zip(edges, edges[1:]))

    async def close(self) -> None:
        await self.stream.aclose()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def page_camera_in_python(py: Client, page: Page) -> FrameClock:
    """The page publishes its camera; python subscribes and starts timing frames."""
    await publish_page(page, camera=True, microphone=False, **PAGE_VIDEO)
    sub = await py.wait_event(
        "track_subscribed",
        lambda e: e.args[2].identity == "web" and e.args[1].kind == rtc.TrackKind.KIND_VIDEO,
        timeout=30,
        what="python to subscribe to the page's camera",
    )
    clock = FrameClock(sub.args[0])
    await wait_until(lambda: len(clock.times) >= 20, timeout=30, what="python to decode the page's camera")
    return clock


def web_video_subscriptions(py: Client) -> list:
    return [
        e
        for e in py.events
        if e.name == "track_subscribed"
        and e.args[2].identity == "web"
        and e.args[1].kind == rtc.TrackKind.KIND_VIDEO
    ]


async def page_events(page: Page, since: int = 0) -> list[dict]:
    return (await page.call("events"))[since:]


async def test_signal_reconnect_resumes_the_same_session(server: Server, browsers: Browsers) -> None:
    room = unique("resume-web")
    async with Clients(server) as clients, browsers:
        py = await clients.join(room, "py")
        page = await browsers.open("web")
        page.interruptions_expected = True  # the test breaks the connection itself
        joined = await connect_page(page, server, room, "web")
        clock = await page_camera_in_python(py, page)
        try:
            before = {u["remoteType"]: u for u in await page.call("iceUfrags")}
            seen = len(await page.call("events"))
            loop = asyncio.get_running_loop()
            t0 = loop.time()

            await page.call("simulate", "signal-reconnect")

            async def resumed() -> bool:
                names = [e["name"] for e in await page_events(page, seen)]
                return "reconnected" in names

            await wait_until(resumed, timeout=RESUME_TIMEOUT, interval=0.3, what="the page to reconnect")
            names = [e["name"] for e in await page_events(page, seen)]
            assert "signalReconnecting" in names, f"a resume, not a full reconnect: {names}"
            assert "reconnecting" not in names and "participantDisconnected" not in names, names
            state = await page.call("state")
            assert state["local"]["sid"] == joined["local"]["sid"], "the same participant sid"

            after = {u["remoteType"]: u for u in await page.call("iceUfrags")}
            # The subscriber connection (the server offers) got the server's new
            # credentials; the publisher connection (the page offers) its own.
            assert after["offer"]["remote"] != before["offer"]["remote"], (before, after)
            assert after["answer"]["local"] != before["answer"]["local"], (before, after)

            t1 = loop.time()
            await wait_until(
                lambda: clock.frames_since(t1 + 1.0) >= 20,
                timeout=20,
                what="python to keep decoding the page's camera after the resume",
            )
            gap = clock.longest_gap(t0, loop.time())
            assert gap <= MAX_GAP, f"python's video stopped for {gap:.2f}s across the resume"
            assert not py.seen("participant_disconnected"), "python saw the page leave"
        finally:
            await clock.close()


async def test_a_second_signal_break_on_resume_is_resumed_again(
    server: Server, browsers: Browsers
) -> None:
    """'disconnect-signal-on-resume': the server closes the signal right after
    answering the next resume; the SDK resumes once more, same session."""
    room = unique("resume-twice")
    async with Clients(server) as clients, browsers:
        py = await clients.join(room, "py")
        page = await browsers.open("web")
        page.interruptions_expected = True  # the test breaks the connection itself
        joined = await connect_page(page, server, room, "web")
        clock = await page_camera_in_python(py, page)
        try:
            seen = len(await page.call("events"))
            loop = asyncio.get_running_loop()
            await page.call("simulate", "disconnect-signal-on-resume")

            async def settled() -> bool:
                names = [e["name"] for e in await page_events(page, seen)]
                return "reconnected" in names

            await wait_until(settled, timeout=RESUME_TIMEOUT * 2, interval=0.3, what="the resume")
            # The server answered the first resume and closed its socket: the SDK had to
            # open a second one (the driver logs every WebSocket it opens).
            resumes = [
                line
                for line in page.log_tail(100_000).splitlines()
                if " ws open " in line and "reconnect=1" in line
            ]
            assert len(resumes) >= 2, f"one resume socket only: {resumes}"
            state = await page.call("state")
            assert state["local"]["sid"] == joined["local"]["sid"], "still the same session"
            t1 = loop.time()
            await wait_until(lambda: clock.frames_since(t1) >= 20, timeout=20, what="media after")
            assert not py.seen("participant_disconnected")
        finally:
            await clock.close()


async def test_a_resume_the_client_fails_ends_in_a_full_reconnect(
    server: Server, browsers: Browsers
) -> None:
    """'resume-reconnect': the SDK fails its own resume on purpose and joins
    again from scratch: a new sid, seen by python as a leave and a join, and the
    page's camera decodes again."""
    room = unique("resume-full")
    async with Clients(server) as clients, browsers:
        py = await clients.join(room, "py")
        page = await browsers.open("web")
        page.interruptions_expected = True  # the test breaks the connection itself
        joined = await connect_page(page, server, room, "web")
        clock = await page_camera_in_python(py, page)
        await clock.close()
        subscribed_before = len(web_video_subscriptions(py))
        await page.call("simulate", "resume-reconnect")

        async def back() -> bool:
            state = await page.call("state")
            return state["state"] == "connected" and state["local"]["sid"] != joined["local"]["sid"]

        await wait_until(back, timeout=RESUME_TIMEOUT * 2, interval=0.3, what="the page to rejoin")
        new_sid = (await page.call("state"))["local"]["sid"]
        await wait_until(
            lambda: py.seen(
                "participant_connected",
                lambda e: e.participant.identity == "web" and e.participant.sid == new_sid,
            ),
            what="python to see the page's new session",
        )
        sub = await wait_until(
            lambda: web_video_subscriptions(py)[subscribed_before:],
            timeout=30,
            what="the page's camera again, republished",
        )
        again = FrameClock(sub[0].args[0])
        try:
            await wait_until(lambda: len(again.times) >= 20, timeout=30, what="frames again")
        finally:
            await again.close()
