"""Hostile clients cannot hurt anyone else. Each test runs an attack with an ordinary
token (raw WebSocket, UDP and TCP, as an attacker would) against a server that also hosts
a normal room, where the python SDK forwards video; and checks that the attack is refused
or contained, that the normal room's video never stops for over a second, and that the
server's memory stays bounded. docs/robustness.md lists each attack and limit.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import aiohttp
from livekit import api, rtc
from livekit.protocol import models
from livekit.protocol import rtc as sig

from harness import (
    NODE_IP,
    Clients,
    Server,
    free_port,
    unique,
    wait_until,
)
from test_browser import PY_FPS, publish_python_video
from test_metrics import scrape

MAX_GAP = 1.0  # seconds without a decoded frame in the normal room
RSS_GROWTH_MB = 200  # memory an attack may add, at most


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class NormalRoom:
    """A python publisher's moving video and a python subscriber timing its frames."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.stream: rtc.VideoStream | None = None

    def longest_gap(self, start: float, end: float) -> float:
        inside = [t for t in self.times if start <= t <= end]
        edges = [start, *inside, end]
        return max(b - a for a, b in zip(edges, edges[1:]))

    def check(self, start: float) -> None:
        end = asyncio.get_running_loop().time()
        gap = self.longest_gap(start, end)
        assert gap <= MAX_GAP, f"the normal room's video stopped for {gap:.2f}s during the attack"


@asynccontextmanager
async def normal_room(server: Server) -> AsyncIterator[NormalRoom]:
    room = unique("normal")
    watch = NormalRoom()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with Clients(server) as clients:
        pub = await clients.join(room, "pub")
        sub = await clients.join(room, "sub")
        feeder = await publish_python_video(pub.room, stop)
        event = await sub.wait_event(
            "track_subscribed",
            lambda e: e.args[1].kind == rtc.TrackKind.KIND_VIDEO,
            timeout=20,
            what="the normal room's subscriber to get the video",
        )
        watch.stream = rtc.VideoStream(event.args[0])

        async def count() -> None:
            async for _ in watch.stream:
                watch.times.append(loop.time())

        counter = loop.create_task(count())
        await wait_until(lambda: len(watch.times) >= PY_FPS, timeout=20, what="the normal room's video")
        try:
            yield watch
        finally:
            stop.set()
            feeder.cancel()
            await watch.stream.aclose()
            counter.cancel()
            await asyncio.gather(feeder, counter, return_exceptions=True)


@asynccontextmanager
async def attacked(tmp_path: Path, name: str) -> AsyncIterator[tuple[Server, int, NormalRoom]]:
    """A server with metrics, its normal room running, and the attack's bounds checked
    after the block: video without a gap, memory bounded."""
    port = free_port(socket.SOCK_STREAM)
    server = Server(tmp_path / f"{name}.log", ["--prometheus-port", str(port)]).start()
    try:
        async with normal_room(server) as watch:
            rss_before = rss_mb(server.pid)
            start = asyncio.get_running_loop().time()
            yield server, port, watch
            await asyncio.sleep(1.0)  # the room must still flow after the attack
            watch.check(start)
            grown = rss_mb(server.pid) - rss_before
            assert grown < RSS_GROWTH_MB, f"the server grew by {grown:.0f} MB"
        assert server.alive()
    finally:
        server.stop()


async def ws_join(
    http: aiohttp.ClientSession, server: Server, room: str, identity: str, token: str | None = None
) -> aiohttp.ClientWebSocketResponse:
    token = token or server.token(identity, room)
    ws = await http.ws_connect(
        f"{server.ws_url}/rtc?access_token={token}&protocol=16",
        timeout=aiohttp.ClientWSTimeout(ws_close=5),
        max_msg_size=0,
    )
    await next_signal(ws, "join")
    return ws


async def next_signal(ws: aiohttp.ClientWebSocketResponse, want: str, timeout: float = 10) -> sig.SignalResponse:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want} within {timeout}s")
        msg = await asyncio.wait_for(ws.receive(), left)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"waiting for {want}, the socket said {msg.type}: {msg.data!r}")
        resp = sig.SignalResponse.FromString(msg.data)
        if resp.WhichOneof("message") == want:
            return resp


async def send(ws: aiohttp.ClientWebSocketResponse, **req: object) -> None:
    await ws.send_bytes(sig.SignalRequest(**req).SerializeToString())


def token_with(server: Server, identity: str, room: str, **grants: object) -> str:
    return (
        api.AccessToken(server.api_key, server.api_secret)
        .with_identity(identity)
        .with_grants(api.VideoGrants(room_join=True, room=room, **grants))
        .to_jwt()
    )


async def test_track_announcements_are_bounded_and_checked(tmp_path: Path) -> None:
    async with attacked(tmp_path, "tracks") as (server, _, _), aiohttp.ClientSession() as http:
        room = unique("tracks")
        ws = await ws_join(http, server, room, "hoarder")
        # An announcement the server keeps pending, again and again.
        published = refused = 0
        for i in range(200):
            await send(ws, add_track=sig.AddTrackRequest(cid=f"c{i}", type=models.AUDIO, source=models.MICROPHONE))
        for _ in range(200):
            resp = (await next_signal_any(ws, ("track_published", "request_response")))
            if resp.WhichOneof("message") == "track_published":
                published += 1
            else:
                assert resp.request_response.reason == sig.RequestResponse.LIMIT_EXCEEDED, resp
                refused += 1
        assert published == 16 and refused == 184, (published, refused)

        # A track description too large, or with too many layers.
        await send(ws, add_track=sig.AddTrackRequest(cid="big", type=models.AUDIO, name="n" * 100_000))
        resp = (await next_signal(ws, "request_response")).request_response
        assert resp.reason == sig.RequestResponse.LIMIT_EXCEEDED and resp.add_track.cid == "big", resp

        # A microphone-only grant cannot publish video by calling it a microphone.
        mic_only = token_with(server, "mic", room, can_publish_sources=["microphone"])
        ws2 = await ws_join(http, server, room, "mic", mic_only)
        await send(ws2, add_track=sig.AddTrackRequest(cid="v", type=models.VIDEO, source=models.MICROPHONE))
        resp = (await next_signal(ws2, "request_response")).request_response
        assert resp.reason == sig.RequestResponse.NOT_ALLOWED, resp
        await ws2.close()
        await ws.close()


async def next_signal_any(ws: aiohttp.ClientWebSocketResponse, wants: tuple[str, ...]) -> sig.SignalResponse:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        resp = sig.SignalResponse.FromString(msg.data)
        if resp.WhichOneof("message") in wants:
            return resp


async def test_request_floods_stay_in_their_room(tmp_path: Path) -> None:
    """Thousands of requests, some with lists far past the limits, from one client: its
    own room works through them (or refuses them); every other room goes on."""
    async with attacked(tmp_path, "flood") as (server, _, _), aiohttp.ClientSession() as http:
        room = unique("flood")
        ws = await ws_join(http, server, room, "flooder")
        huge = [f"TR_{i:012d}" for i in range(20_000)]
        for i in range(3000):
            await send(ws, mute=sig.MuteTrackRequest(sid=f"TR_{i}", muted=i % 2 == 0))
        for _ in range(20):
            await send(ws, track_setting=sig.UpdateTrackSettings(track_sids=huge, disabled=True))
            await send(ws, subscription=sig.UpdateSubscription(track_sids=huge, subscribe=True))
            await send(
                ws,
                subscription_permission=sig.SubscriptionPermission(
                    track_permissions=[sig.TrackPermission(participant_identity=f"x{i}") for i in range(5000)]
                ),
            )
        # The session is still there and answers, once it is through the flood.
        await send(ws, ping=777)
        resp = await next_signal(ws, "pong", timeout=60)
        assert resp.pong == 777
        await ws.close()


async def test_a_client_that_stops_reading_is_cut_off(tmp_path: Path) -> None:
    async with attacked(tmp_path, "reader") as (server, port, _), aiohttp.ClientSession() as http:
        room = unique("reader")
        # The victim of its own choice: joins, then never reads its socket again.
        lazy = await ws_join(http, server, room, "lazy")
        talker = await ws_join(
            http, server, room, "talker", token_with(server, "talker", room, can_update_own_metadata=True)
        )

        echoed = asyncio.Queue[None]()

        async def drain() -> None:
            while (msg := await talker.receive()).type == aiohttp.WSMsgType.BINARY:
                resp = sig.SignalResponse()
                resp.ParseFromString(msg.data)
                if resp.WhichOneof("message") == "update":
                    echoed.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(drain())
        # Every update is broadcast to the lazy one: 60 KB each, 300 of them (~18 MB). The
        # talker takes its own echo before sending the next, so that it is never the slow one.
        for i in range(300):
            await send(talker, update_metadata=sig.UpdateParticipantMetadata(metadata=f"{i:05d}" * 12_000))
            await asyncio.wait_for(echoed.get(), 10)
        # The server gives up on the lazy socket: its link closes; its session stays for a
        # resume, and, never connected, ends (it has no media).
        async def gone() -> bool:
            async with server.api() as lk:
                people = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
            return "lazy" not in [p.identity for p in people.participants]

        await wait_until(gone, timeout=30, interval=0.5, what="the server to drop the client that does not read")
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await talker.close()
        try:
            await asyncio.wait_for(lazy.close(), 5)
        except (asyncio.TimeoutError, OSError, aiohttp.ClientError):
            pass


async def test_a_kicked_participant_loses_its_media_at_once(tmp_path: Path) -> None:
    async with attacked(tmp_path, "kick") as (server, port, _), aiohttp.ClientSession() as http:
        room = unique("kick")
        before = scrape(port)["aviary_transports"]
        ws = await ws_join(http, server, room, "kicked")
        await wait_until(
            lambda: scrape(port)["aviary_transports"] >= before + 1,
            timeout=10,
            what="the kicked one's subscriber transport to exist",
        )
        async with server.api() as lk:
            await lk.room.remove_participant(api.RoomParticipantIdentity(room=room, identity="kicked"))
        leave = (await next_signal(ws, "leave")).leave
        assert leave.reason == models.PARTICIPANT_REMOVED
        # The socket stays open on the client's side; the media side is gone regardless.
        await wait_until(
            lambda: scrape(port)["aviary_transports"] <= before,
            timeout=5,
            what="the kicked participant's transports to close",
        )
        await ws.close()


async def test_ice_tcp_handshakes_have_one_deadline_and_a_cap(tmp_path: Path) -> None:
    async with attacked(tmp_path, "icetcp") as (server, _, _):
        # Blocking sockets, in a thread: the test's event loop keeps timing the video.
        await asyncio.to_thread(ice_tcp_attack, server.tcp_port)


def ice_tcp_attack(port: int) -> None:
    silent = []
    for _ in range(80):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))  # the attacker's address
        s.settimeout(5)
        s.connect((NODE_IP, port))
        silent.append(s)
    # From another address, a slow drip: one byte every half second, never a whole frame
    # within the 5 s handshake deadline.
    drip = socket.create_connection((NODE_IP, port), timeout=5)
    start = time.monotonic()
    frame = struct.pack("!H", 100) + os.urandom(100)
    closed_at = None
    for b in frame[:14]:
        try:
            drip.send(bytes([b]))
        except OSError:
            closed_at = time.monotonic()
            break
        time.sleep(0.5)
    if closed_at is None:
        drip.settimeout(3)
        try:
            assert drip.recv(1) == b"", "the drip connection was kept"
        except OSError:
            pass
        closed_at = time.monotonic()
    assert closed_at - start < 8, f"the drip lasted {closed_at - start:.1f}s past the 5 s deadline"
    # The silent ones were closed by the per-address cap or their 5 s deadline (at most a
    # few seconds later on a busy machine).
    kept = set(silent)
    until = start + 15
    while kept and time.monotonic() < until:
        readable, _, _ = select.select(list(kept), [], [], 0.5)
        for s in readable:
            try:
                if s.recv(1) == b"":
                    kept.discard(s)
            except OSError:
                kept.discard(s)
    for s in silent:
        s.close()
    drip.close()
    assert not kept, f"{len(kept)} silent connections were kept past their deadline"
    # And a new connection is still taken (and refused for its unknown ufrag).
    with socket.create_connection((NODE_IP, port), timeout=5) as s:
        s.sendall(struct.pack("!H", 4) + b"junk")
        s.settimeout(5)
        assert s.recv(1) == b""


async def test_http_slowloris_is_cut_off(tmp_path: Path) -> None:
    async with attacked(tmp_path, "slowloris") as (server, _, _):
        attackers = await asyncio.to_thread(open_slow_connections, server.port, 300)
        # Meanwhile others are served.
        for _ in range(5):
            answer = await asyncio.to_thread(health_check, server.port)
            assert answer.startswith(b"HTTP/1.1 200"), f"a health check failed during the attack: {answer!r}"
            await asyncio.sleep(0.5)
        # A header line trickling in, too slowly: cut off by the header timeout.
        await asyncio.sleep(11)
        open_left = await asyncio.to_thread(lambda: sum(not closed_by_peer(s) for s in attackers))
        for s in attackers:
            s.close()
        assert open_left == 0, f"{open_left} slow connections were kept past the header timeout"


def open_slow_connections(port: int, n: int) -> list[socket.socket]:
    attackers = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))  # the attacker's own address
        s.settimeout(5)
        try:
            s.connect((NODE_IP, port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            s.close()
            continue
        attackers.append(s)
    return attackers


def health_check(port: int) -> bytes:
    with socket.create_connection((NODE_IP, port), timeout=5) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        c.settimeout(5)
        return c.recv(100)


def closed_by_peer(s: socket.socket) -> bool:
    """Whether the server has closed `s` (whatever it sent before closing)."""
    s.settimeout(0.5)
    try:
        s.sendall(b"X-Slow: 1\r\n")
        for _ in range(20):
            if s.recv(4096) == b"":
                return True
    except OSError:
        return True
    return False


async def test_attributes_cannot_grow_past_their_limit(tmp_path: Path) -> None:
    async with attacked(tmp_path, "attrs") as (server, _, _), aiohttp.ClientSession() as http:
        room = unique("attrs")
        token = token_with(server, "grower", room, can_update_own_metadata=True)
        ws = await ws_join(http, server, room, "grower", token)
        refused = 0
        for i in range(20):
            attrs = {f"k{i}-{j}": "v" * 1000 for j in range(9)}  # ~9 KB each time, new keys
            await send(ws, update_metadata=sig.UpdateParticipantMetadata(attributes=attrs, request_id=i + 1))
            resp = (await next_signal(ws, "request_response")).request_response
            if resp.reason == sig.RequestResponse.LIMIT_EXCEEDED:
                refused += 1
        assert refused >= 12, f"only {refused} of 20 updates refused"
        async with server.api() as lk:
            p = await lk.room.get_participant(api.RoomParticipantIdentity(room=room, identity="grower"))
        size = sum(len(k) + len(v) for k, v in p.attributes.items())
        assert size <= 64_000, f"attributes grew to {size} bytes"
        await ws.close()
