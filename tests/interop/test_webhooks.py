"""Webhooks, as upstream sends them: every event of a room POSTed to each
`webhook.urls` entry in the room's order, signed so that the server SDKs'
WebhookReceivers (python livekit-api, and the Node livekit-server-sdk) accept
them; a receiver that is down gets the events once it is back; and SIGTERM
tells every participant, reports the room finished and exits 0.

Each test runs its own server, configured with the receiver's URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from livekit import api, rtc

from harness import (
    API_KEY,
    API_SECRET,
    EVENT_TIMEOUT,
    REPO_ROOT,
    Clients,
    Server,
    WebhookSink,
    unique,
    free_port,
    wait_until,
)
from test_media import publish_tone
from test_metrics import scrape

HOOK_TIMEOUT = 20.0  # from an event to its webhook, retries included
NODE_VERIFIER = REPO_ROOT / "tests" / "browser" / "verify_webhook.mjs"


def hooked_server(
    log: Path, sink: WebhookSink, room_yaml: str = "", metrics_port: int = 0
) -> Server:
    body = f"webhook:\n  api_key: {API_KEY}\n  urls: ['{sink.url}']\n"
    if room_yaml:
        body += f"room: {room_yaml}\n"
    if metrics_port:
        body += f"prometheus:\n  port: {metrics_port}\n"
    return Server(log, ["--config-body", body]).start()


async def events_arrived(sink: WebhookSink, room: str, *names: str, timeout: float = HOOK_TIMEOUT) -> None:
    await wait_until(
        lambda: all(n in sink.events(room) for n in names),
        timeout=timeout,
        interval=0.1,
        what=f"webhooks {names} for {room} (got {sink.events(room)}, rejected {sink.rejected})",
    )


def verify_with_node(deliveries: list) -> list[dict]:
    """Runs every delivery through livekit-server-sdk's WebhookReceiver."""
    lines = "".join(
        json.dumps({"body": d.body, "authorization": d.authorization}) + "\n" for d in deliveries
    )
    out = subprocess.run(
        ["node", str(NODE_VERIFIER), API_KEY, API_SECRET],
        input=lines,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=NODE_VERIFIER.parent,
    )
    assert out.returncode == 0, f"the Node verifier failed: {out.stderr}"
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


async def test_a_session_is_reported_in_order_and_verifies_with_both_sdks(tmp_path: Path) -> None:
    sink = await WebhookSink().start()
    metrics_port = free_port()
    server = hooked_server(
        tmp_path / "hooks.log", sink, "{departure_timeout: 1}", metrics_port=metrics_port
    )
    room = unique("hooks")
    try:
        async with Clients(server) as clients:
            alice = await clients.join(room, "alice")
            sender, publication = await publish_tone(alice)
            try:
                await events_arrived(sink, room, "track_published")
                await alice.room.local_participant.unpublish_track(publication.sid)
                await events_arrived(sink, room, "track_unpublished")
            finally:
                await sender.stop()
            await alice.disconnect()
        await events_arrived(sink, room, "room_finished")
        assert not sink.rejected, f"the python WebhookReceiver refused some: {sink.rejected}"
        assert sink.events(room) == [
            "room_started",
            "participant_joined",
            "track_published",
            "track_unpublished",
            "participant_left",
            "room_finished",
        ], sink.events(room)

        mine = [d for d in sink.deliveries if d.event.room.name == room]
        by_name = {d.event.event: d.event for d in mine}
        for d in mine:
            assert d.content_type == "application/webhook+json", d.content_type
            assert not d.authorization.lower().startswith("bearer"), "the token goes bare, as upstream"
            assert d.event.id.startswith("EV_"), d.event.id
            assert abs(d.event.created_at - time.time()) < 120, d.event.created_at
            # protojson as upstream: camelCase names and int64 as strings
            assert '"createdAt":"' in d.body, d.body
        assert len({d.event.id for d in mine}) == len(mine), "every event has its own id"
        room_sid = by_name["room_started"].room.sid
        assert room_sid.startswith("RM_") and all(d.event.room.sid == room_sid for d in mine)
        joined = by_name["participant_joined"].participant
        assert joined.identity == "alice" and joined.sid == by_name["participant_left"].participant.sid
        assert by_name["participant_left"].participant.state == 3  # DISCONNECTED
        assert by_name["track_published"].track.sid == publication.sid
        assert by_name["track_unpublished"].track.sid == publication.sid
        assert by_name["track_published"].participant.identity == "alice"
        assert by_name["room_finished"].room.name == room

        verdicts = verify_with_node(mine)
        assert [v.get("event") for v in verdicts] == sink.events(room), verdicts
        assert all(v["ok"] for v in verdicts), f"livekit-server-sdk refused some: {verdicts}"
        counts = scrape(metrics_port)
        assert counts.get("aviary_webhooks_sent_total", 0) >= len(mine), counts
        assert counts.get("aviary_webhooks_dropped_total", -1) == 0, counts
    finally:
        server.stop()
        await sink.stop()


async def test_a_tampered_body_fails_both_receivers(tmp_path: Path) -> None:
    """The positive control's negative: the signature binds the exact body."""
    sink = await WebhookSink().start()
    server = hooked_server(tmp_path / "tamper.log", sink)
    room = unique("tamper")
    try:
        async with server.api() as lk:
            await lk.room.create_room(api.CreateRoomRequest(name=room))
        await events_arrived(sink, room, "room_started")
        original = next(d for d in sink.deliveries if d.event.room.name == room)
        tampered = type(original)(
            original.body.replace(room, room + "-x"), original.authorization, original.content_type, None
        )
        verdicts = verify_with_node([original, tampered])
        assert verdicts[0]["ok"] and not verdicts[1]["ok"], verdicts
        try:
            sink.receiver.receive(tampered.body, tampered.authorization)
        except Exception:
            pass
        else:
            raise AssertionError("python's WebhookReceiver accepted a changed body")
    finally:
        server.stop()
        await sink.stop()


async def test_a_receiver_that_was_down_gets_the_events_retried(tmp_path: Path) -> None:
    sink = WebhookSink()  # not listening yet: the first attempts are refused
    server = hooked_server(tmp_path / "retry.log", sink)
    room = unique("retry")
    try:
        async with server.api() as lk:
            await lk.room.create_room(api.CreateRoomRequest(name=room))
            await asyncio.sleep(2.5)  # a first attempt and a retry fail meanwhile
            assert not sink.deliveries
            await sink.start()
            await events_arrived(sink, room, "room_started")
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
            await events_arrived(sink, room, "room_finished")
        assert sink.events(room) == ["room_started", "room_finished"], sink.events(room)
        assert not sink.rejected
    finally:
        server.stop()
        await sink.stop()


async def test_sigterm_tells_everyone_reports_the_room_and_exits_0(tmp_path: Path) -> None:
    sink = await WebhookSink().start()
    server = hooked_server(tmp_path / "sigterm.log", sink)
    room = unique("sigterm")
    try:
        async with Clients(server) as clients:
            a = await clients.join(room, "a")
            b = await clients.join(room, "b")
            await wait_until(lambda: "b" in a.room.remote_participants, what="a to see b")
            await events_arrived(sink, room, "participant_joined")
            os.kill(server.pid, signal.SIGTERM)
            t0 = time.monotonic()
            for c in (a, b):
                await c.wait_event("disconnected", timeout=EVENT_TIMEOUT, what=f"{c.label} to be told")
                assert c.disconnect_reasons[0] == rtc.DisconnectReason.SERVER_SHUTDOWN, (
                    f"{c.label}: expected SERVER_SHUTDOWN, got {c.disconnect_reasons}"
                )
            code = await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 20)
            elapsed = time.monotonic() - t0
            assert code == 0, f"exit status {code}\n{server.log_tail()}"
            assert elapsed < 15, f"shutdown took {elapsed:.1f}s"
        events = sink.events(room)
        assert events[-1] == "room_finished", events
        assert events.count("participant_left") == 2, events
        assert not sink.rejected
    finally:
        server.stop()
        await sink.stop()
