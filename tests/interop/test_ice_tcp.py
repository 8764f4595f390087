"""ICE over TCP with the official SDKs, UDP blocked: media and data both ways, publishing
included, with the Python SDK and with livekit-client in Chromium.

The server binds NODE_IP and advertises SHAPER_IP, where nothing listens on the UDP ports
(the client's UDP checks fail, as behind a firewall that drops UDP) and a TCP proxy
forwards the ICE/TCP port to the server. Every client here expects its selected candidate
pairs to be TCP (the harness checks them at the end of the test), and /metrics must have
counted the media as ICE/TCP traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import AsyncIterator

from livekit import rtc

from browser import Browsers
from harness import (
    EVENT_TIMEOUT,
    MEDIA_TIMEOUT,
    AudioProbe,
    Client,
    Clients,
    Server,
    SolidVideoSender,
    TcpProxy,
    free_port,
    publish_track,
    unique,
    wait_track_subscribed,
    wait_until,
    within,
)
from shaper import SHAPER_IP, server_behind_shaper_address
from test_browser import connect_page, publish_page, publish_python_video
from test_media import DATA_TIMEOUT, TONE_HZ, VIDEO_RGBA, data_from, publish_tone, video_options
from test_metrics import scrape_by_protocol

FRAMES = 20
DATA_MESSAGES = 100


@contextlib.asynccontextmanager
async def tcp_only_server(tmp_path: Path) -> AsyncIterator[Server]:
    """A server whose clients can reach its media only over ICE/TCP."""
    metrics_port = free_port(socket.SOCK_STREAM)
    with server_behind_shaper_address(
        tmp_path / "server.log", ["--prometheus-port", str(metrics_port)]
    ) as server:
        server.metrics_port = metrics_port
        proxy = await TcpProxy(
            server.tcp_port, listen=(SHAPER_IP, server.tcp_port)
        ).start()
        try:
            yield server
        finally:
            await proxy.close()


def tcp_traffic(server: Server) -> dict[str, float]:
    """aviary_{packets,bytes}_{in,out}_total over ICE/TCP, summed over workers."""
    return scrape_by_protocol(server.metrics_port, "tcp")


async def join_over_tcp(clients: Clients, room: str, identity: str) -> Client:
    client = clients.new(identity)
    client.transport = "tcp"
    await client.connect(clients.server.ws_url, clients.server.token(identity, room))
    return client


async def decoded_frames(track: rtc.Track, count: int) -> list[tuple[int, int]]:
    stream = rtc.VideoStream(track)
    sizes: list[tuple[int, int]] = []

    async def read() -> None:
        async for ev in stream:
            sizes.append((ev.frame.width, ev.frame.height))
            if len(sizes) >= count:
                return

    try:
        await asyncio.wait_for(read(), MEDIA_TIMEOUT)
    except asyncio.TimeoutError:
        pass
    finally:
        await asyncio.wait_for(stream.aclose(), 5)
    return sizes


async def send_data(sender: Client, label: str) -> list[bytes]:
    sent = [f"{label} {i:03d}".encode() for i in range(DATA_MESSAGES)]
    for payload in sent:
        await within(
            sender.room.local_participant.publish_data(payload, reliable=True, topic="tcp"),
            DATA_TIMEOUT,
            f"{sender.label}'s publish_data",
        )
    return sent


def data_received(client: Client, identity: str) -> list[bytes]:
    return [p.data for p in data_from(client, identity)]


async def test_python_sdk_media_and_data_over_ice_tcp(tmp_path: Path) -> None:
    room = unique("ice-tcp")
    async with tcp_only_server(tmp_path) as server, Clients(server) as clients:
        alice = await join_over_tcp(clients, room, "alice")
        bob = await join_over_tcp(clients, room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")

        tone, audio_pub = await publish_tone(alice)
        video = SolidVideoSender(320, 240, VIDEO_RGBA, name="cam").start()
        probe = None
        try:
            video_pub = await publish_track(alice, video.track, video_options())
            audio = await wait_track_subscribed(bob, audio_pub.sid)
            probe = AudioProbe(audio.args[0], "bob")
            await probe.wait_for_tone(TONE_HZ, min_seconds=1.0, what="alice's tone at bob over TCP")
            cam = await wait_track_subscribed(bob, video_pub.sid)
            sizes = await decoded_frames(cam.args[0], FRAMES)
            assert len(sizes) >= FRAMES, f"bob decoded {len(sizes)} of {FRAMES} frames over ICE/TCP"

            to_bob = await send_data(alice, "to bob")
            to_alice = await send_data(bob, "to alice")
            await wait_until(
                lambda: len(data_received(bob, "alice")) >= DATA_MESSAGES
                and len(data_received(alice, "bob")) >= DATA_MESSAGES,
                timeout=DATA_TIMEOUT,
                what="reliable data both ways over ICE/TCP",
            )
            assert data_received(bob, "alice") == to_bob
            assert data_received(alice, "bob") == to_alice

            for c in (alice, bob):
                selected = await c.selected_transports()
                assert selected == {"publisher": "tcp", "subscriber": "tcp"}, (c.label, selected)
            tcp = tcp_traffic(server)
            # media both ways: alice's RTP in, bob's RTP out, each well over the checks
            assert tcp.get("aviary_packets_in_total", 0) > 200, tcp
            assert tcp.get("aviary_packets_out_total", 0) > 200, tcp
        finally:
            if probe is not None:
                await probe.close()
            await tone.stop()
            await video.stop()


async def test_browser_media_and_data_over_ice_tcp(tmp_path: Path, browsers: Browsers) -> None:
    room = unique("ice-tcp-web")
    stop = asyncio.Event()
    feeder = None
    async with tcp_only_server(tmp_path) as server, Clients(server) as clients, browsers:
        page = await browsers.open("web")
        page.transport = "tcp"
        joined = await connect_page(page, server, room, "web")
        assert joined["state"] == "connected", joined
        py = await join_over_tcp(clients, room, "py")
        try:
            feeder = await publish_python_video(py.room, stop)
            await page.call("waitForParticipant", "py", EVENT_TIMEOUT * 1000)
            await page.call("waitForTrack", "py", "video", MEDIA_TIMEOUT * 1000, timeout=MEDIA_TIMEOUT + 5)
            stats = await page.call(
                "waitForFramesDecoded", "py", FRAMES, MEDIA_TIMEOUT * 1000, timeout=MEDIA_TIMEOUT + 5
            )
            assert stats["framesDecoded"] >= FRAMES, stats

            published = await publish_page(page, camera=True, microphone=False, width=320, height=180)
            sid = next(t["sid"] for t in published["tracks"] if t["kind"] == "video")
            cam = await wait_track_subscribed(py, sid)
            sizes = await decoded_frames(cam.args[0], FRAMES)
            assert len(sizes) >= FRAMES, f"python decoded {len(sizes)} of the page's frames over ICE/TCP"

            texts = [f"from page {i}" for i in range(20)]
            await page.call("publishData", texts, True)
            await wait_until(
                lambda: len(data_received(py, "web")) >= len(texts),
                timeout=DATA_TIMEOUT,
                what="the page's data at python",
            )
            assert data_received(py, "web") == [t.encode() for t in texts]
            to_page = await send_data(py, "to page")

            async def page_got() -> bool:
                events = await page.call("events")
                return [e["text"] for e in events if e["name"] == "dataReceived"] == [
                    p.decode() for p in to_page
                ]

            deadline = asyncio.get_running_loop().time() + DATA_TIMEOUT
            while not await page_got():
                assert asyncio.get_running_loop().time() < deadline, "python's data never reached the page"
                await asyncio.sleep(0.2)
            assert tcp_traffic(server).get("aviary_packets_out_total", 0) > 200
        finally:
            stop.set()
            if feeder is not None:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
