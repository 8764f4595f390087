"""Bad input must not take the server down: garbage on the UDP and ICE/TCP ports, undecodable
and hostile signaling frames, and a peer that vanishes mid-negotiation. After each attack the
server still answers, and real SDK clients still connect and see each other."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct

import aiohttp
from google.protobuf import json_format
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
