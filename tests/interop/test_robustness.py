"""Bad input must not take the server down: garbage on the UDP and ICE/TCP ports, undecodable
and hostile signaling frames, and a peer that vanishes mid-negotiation. After each attack the
server still answers, and real SDK clients still connect and see each other."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time

import aiohttp
from google.protobuf import json_format
from livekit.protocol import models
from livekit.protocol import rtc as sig

from harness import NODE_IP, UDP_PORTS_PER_SERVER, Clients, Server, http_request, unique, wait_until


def _stun_binding(username: bytes) -> bytes:
    attr = struct.pack("!HH", 0x0006, len(username)) + username
    attr += b"\0" * (-len(attr) % 4)
    return struct.pack("!HHI", 0x0001, len(attr), 0x2112A442) + os.urandom(12) + attr


async def _still_serves(server: Server, room: str) -> None:
    assert http_request(server.http_url + "/").status == 200, "health check failed"
    async with Clients(server) as clients:
        a = await clients.join(room, "after-a")
        b = await clients.join(room, "after-b")
        await wait_until(lambda: "after-a" in b.room.remote_participants, what="clients to meet")
        assert a.room.isconnected() and b.room.isconnected()


async def test_garbage_datagrams_and_tcp_frames(server: Server) -> None:
    rng = random.Random(7)
    # A peer is connected while the noise arrives, so routers and demux are exercised too.
    async with Clients(server) as clients:
        await clients.join(unique("noise"), "bystander")
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i in range(3000):
                port = server.udp_port + i % UDP_PORTS_PER_SERVER
                kind = i % 4
                if kind == 0:
                    data = os.urandom(rng.randrange(0, 1500))
                elif kind == 1:  # STUN-looking, unknown ufrag
                    data = _stun_binding(b"nosuchufrag:x")
                elif kind == 2:  # truncated STUN header with a huge length
                    data = struct.pack("!HHI", 0x0001, 0xFFFF, 0x2112A442) + os.urandom(4)
                else:  # DTLS / RTP-looking first bytes
                    data = bytes([rng.choice([22, 23, 0x80, 0x90])]) + os.urandom(rng.randrange(1, 300))
                udp.sendto(data, (NODE_IP, port))
        finally:
            udp.close()
        for payload in (
            os.urandom(200),
            struct.pack("!H", 0xFFFF) + os.urandom(100),  # oversized frame length
            struct.pack("!H", 40) + _stun_binding(b"nosuchufrag:x")[:40],
        ):
            with socket.create_connection((NODE_IP, server.tcp_port), timeout=5) as s:
                s.sendall(payload)
        # An idle connection that never sends a frame must not block others.
        idle = socket.create_connection((NODE_IP, server.tcp_port), timeout=5)
        try:
            await asyncio.sleep(0.5)
            assert server.alive()
            await _still_serves(server, unique("after-noise"))
        finally:
            idle.close()


async def test_hostile_signaling_frames(server: Server) -> None:
    room = unique("hostile")
    url = f"{server.ws_url}/rtc?access_token={server.token('mallory', room)}&protocol=16"
    requests = [
        sig.SignalRequest(offer=sig.SessionDescription(type="offer", sdp="v=0\r\ngarbage")),
        sig.SignalRequest(answer=sig.SessionDescription(type="answer", sdp="not sdp at all")),
        sig.SignalRequest(trickle=sig.TrickleRequest(candidateInit="{not json", target=1)),
        sig.SignalRequest(
            trickle=sig.TrickleRequest(
                candidateInit='{"candidate":"candidate:1 1 udp 1 999.1.1.1 x typ host"}', target=0
            )
        ),
        sig.SignalRequest(add_track=sig.AddTrackRequest(cid="", type=7, source=99)),
        sig.SignalRequest(mute=sig.MuteTrackRequest(sid="TR_nope", muted=True)),
        sig.SignalRequest(subscription=sig.UpdateSubscription(track_sids=["TR_nope"], subscribe=True)),
        sig.SignalRequest(track_setting=sig.UpdateTrackSettings(track_sids=["TR_nope"], disabled=True)),
        sig.SignalRequest(update_metadata=sig.UpdateParticipantMetadata(metadata="x" * 100_000)),
    ]
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
            first = await asyncio.wait_for(ws.receive(), 10)
            assert first.type == aiohttp.WSMsgType.BINARY
            join = sig.SignalResponse.FromString(first.data)
            assert join.WhichOneof("message") == "join"
            for frame in (os.urandom(64), b"\xff" * 10, b""):
                await ws.send_bytes(frame)
            await ws.send_str("{ this is not json")
            await ws.send_str('{"offer": {"type": "offer", "sdp": 5}}')
            for r in requests:
                await ws.send_bytes(r.SerializeToString())
            # The session is still alive: a ping is answered.
            await ws.send_bytes(sig.SignalRequest(ping=1234).SerializeToString())

            async def pong() -> None:
                while True:
                    msg = await ws.receive()
                    assert msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT), msg
                    # Having sent text frames, we are a JSON client now: answers come as text.
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        resp = sig.SignalResponse.FromString(msg.data)
                    else:
                        resp = json_format.Parse(msg.data, sig.SignalResponse())
                    if resp.WhichOneof("message") == "pong":
                        assert resp.pong == 1234
                        assert msg.type == aiohttp.WSMsgType.TEXT, "a JSON client gets JSON"
                        return

            await asyncio.wait_for(pong(), 10)
    assert server.alive()
    await _still_serves(server, unique("after-hostile"))


async def _signal(ws: aiohttp.ClientWebSocketResponse, want: str) -> sig.SignalResponse:
    """The next SignalResponse carrying `want` (others are skipped)."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        resp = sig.SignalResponse.FromString(msg.data)
        if resp.WhichOneof("message") == want:
            return resp


async def test_refused_publishes_and_pings_are_answered(server: Server) -> None:
    """An AddTrackRequest the server refuses gets a RequestResponse naming why (so an SDK
    fails the publish at once); `ping_req` gets a `pong_resp` with the server's clock."""
    from livekit import api

    room = unique("refusals")
    viewer = (
        api.AccessToken(server.api_key, server.api_secret)
        .with_identity("viewer")
        .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=False))
        .to_jwt()
    )
    cases = [
        (viewer, sig.AddTrackRequest(cid="mic", type=0, name="mic"), "NOT_ALLOWED"),
        (server.token("pub", room), sig.AddTrackRequest(cid="odd", type=7), "UNSUPPORTED_TYPE"),
    ]
    async with aiohttp.ClientSession() as http:
        for token, add, reason in cases:
            url = f"{server.ws_url}/rtc?access_token={token}&protocol=16"
            async with http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
                await _signal(ws, "join")
                await ws.send_bytes(sig.SignalRequest(add_track=add).SerializeToString())
                resp = (await _signal(ws, "request_response")).request_response
                assert sig.RequestResponse.Reason.Name(resp.reason) == reason, resp
                assert resp.add_track.cid == add.cid and resp.message, resp

                sent_at = 1_700_000_000_000
                await ws.send_bytes(
                    sig.SignalRequest(ping_req=sig.Ping(timestamp=sent_at, rtt=5)).SerializeToString()
                )
                pong = (await _signal(ws, "pong_resp")).pong_resp
                assert pong.last_ping_timestamp == sent_at
                assert abs(pong.timestamp - time.time() * 1000) < 60_000, pong


async def test_a_resume_of_an_unknown_session_asks_for_a_full_reconnect(server: Server) -> None:
    room = unique("resume")
    url = (
        f"{server.ws_url}/rtc?access_token={server.token('ghost', room)}&protocol=16"
        "&reconnect=1&sid=PA_gone&reconnect_reason=1"
    )
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
            leave = (await _signal(ws, "leave")).leave
            assert leave.action == sig.LeaveRequest.Action.RECONNECT, leave
            assert leave.can_reconnect and leave.reason == models.DisconnectReason.STATE_MISMATCH
            closing = await asyncio.wait_for(ws.receive(), 10)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closing
    async with server.api() as lk:
        from livekit import api

        listed = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
        assert list(listed.rooms) == [], "the resume joined nobody (no room was even made)"


async def test_an_oversized_signaling_message_closes_only_that_session(server: Server) -> None:
    room = unique("oversized")
    url = f"{server.ws_url}/rtc?access_token={server.token('big', room)}&protocol=16"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
            await _signal(ws, "join")
            try:
                await ws.send_bytes(b"\x0a" + os.urandom(2 << 20))
            except (ConnectionError, aiohttp.ClientError):
                pass  # the server may close the socket before the client has written it all
            else:
                msg = await asyncio.wait_for(ws.receive(), 10)
                while msg.type == aiohttp.WSMsgType.BINARY:
                    msg = await asyncio.wait_for(ws.receive(), 10)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg
    assert server.alive()
    await _still_serves(server, unique("after-oversized"))
