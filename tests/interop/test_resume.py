"""A participant outlives its WebSocket: when signaling breaks, the python SDK
resumes the same session (`/rtc?reconnect=1`), the others never see it leave,
and no reliable data is lost or repeated. A resume the server cannot honour is
answered with a full-reconnect request (test_robustness.py).

The WebSocket is cut from the outside: the SDK reaches the server through a
TCP proxy of the test's (harness.TcpProxy) that resets every connection it
carries; media and data keep their own path (UDP, straight to the server).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from livekit import rtc

from harness import (
    EVENT_TIMEOUT,
    MAX_SEND_SECONDS,
    AudioProbe,
    Client,
    Clients,
    Server,
    TcpProxy,
    ToneSender,
    publish_track,
    unique,
    wait_track_subscribed,
    wait_until,
    within,
)
from shaper import shaped_server

MESSAGES = 500
DATA_TIMEOUT = 30.0
RESUME_TIMEOUT = 30.0


async def test_python_resumes_after_its_websocket_is_cut(server: Server) -> None:
    room = unique("resume-py")
    proxy = await TcpProxy(server.port).start()
    try:
        async with Clients(server) as clients:
            bob = await clients.join(room, "bob")
            alice = clients.new("alice")
            await alice.connect(proxy.ws_url, server.token("alice", room))
            assert proxy.connections >= 1, "alice's signaling goes through the proxy"
            await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")
            first_sid = alice.room.local_participant.sid

            sent = [f"message {i:04d}".encode() for i in range(MESSAGES)]

            async def send_all() -> None:
                for i, payload in enumerate(sent):
                    await within(
                        alice.room.local_participant.publish_data(payload, reliable=True, topic="seq"),
                        DATA_TIMEOUT,
                        f"alice's publish_data of message {i}",
                    )
                    if i % 10 == 9:
                        await asyncio.sleep(0.05)  # ~2.5 s of messages, the cut in the middle

            sender = asyncio.get_running_loop().create_task(send_all())
            await wait_until(
                lambda: len(bob.seen("data_received")) >= 100,
                timeout=DATA_TIMEOUT,
                what="the first 100 messages to arrive before the cut",
            )
            assert proxy.cut() >= 1, "there was a signaling connection to cut"
            await within(sender, DATA_TIMEOUT, "alice's sending across the cut")

            await alice.wait_event(
                "reconnected",
                timeout=RESUME_TIMEOUT,
                what="alice's SDK to reconnect after its WebSocket was cut",
            )
            assert proxy.connections >= 2, "alice came back through the proxy"
            assert alice.room.local_participant.sid == first_sid, (
                "a resume keeps the participant sid; a new one means the server made her "
                "join again from scratch"
            )
            await wait_until(
                lambda: len(bob.seen("data_received")) >= MESSAGES,
                timeout=DATA_TIMEOUT,
                what=f"bob to receive all {MESSAGES} messages",
            )
            await asyncio.sleep(1.0)  # nothing more (no repeats) may follow
            got = [e.args[0].data for e in bob.seen("data_received")]
            assert len(got) == MESSAGES, f"bob got {len(got)} messages for {MESSAGES} sent"
            if got != sent:
                first_bad = next(i for i, (g, s) in enumerate(zip(got, sent)) if g != s)
                raise AssertionError(
                    f"message {first_bad} is {got[first_bad]!r}, want {sent[first_bad]!r}: "
                    "across a resume reliable data must arrive once each and in order"
                )
            assert not bob.seen(
                "participant_disconnected", lambda e: e.participant.identity == "alice"
            ), "bob saw alice leave: the cut must not end her session"
            joins = bob.seen("participant_connected", lambda e: e.participant.identity == "alice")
            assert len(joins) == 1, f"bob saw alice join {len(joins)} times, not once"
            assert alice.room.connection_state == rtc.ConnectionState.CONN_CONNECTED

            # The resumed session works both ways: bob's data reaches alice.
            await bob.room.local_participant.publish_data(b"after the cut", reliable=True)
            await wait_until(
                lambda: any(e.args[0].data == b"after the cut" for e in alice.seen("data_received")),
                timeout=EVENT_TIMEOUT,
                what="bob's message to reach the resumed alice",
            )
    finally:
        await proxy.close()


async def test_a_resume_after_the_participant_was_removed_rejoins(server: Server) -> None:
    """A resume for a session the room no longer has (removed meanwhile by
    RoomService) gets a full-reconnect request; the SDK then joins again as a
    new participant, which the others see arrive."""
    room = unique("resume-gone")
    proxy = await TcpProxy(server.port).start()
    try:
        async with Clients(server) as clients, server.api() as lk:
            from livekit import api

            bob = await clients.join(room, "bob")
            alice = clients.new("alice")
            alice.expect("reconnecting", "reconnected")  # the test cuts her signaling
            await alice.connect(proxy.ws_url, server.token("alice", room))
            await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")
            first_sid = alice.room.local_participant.sid
            # Signaling breaks, and while alice is away the server removes her.
            proxy.cut()
            await lk.room.remove_participant(api.RoomParticipantIdentity(room=room, identity="alice"))
            await wait_until(
                lambda: bob.seen("participant_disconnected", lambda e: e.participant.identity == "alice"),
                what="bob to see alice removed",
            )
            await wait_until(
                lambda: alice.room.local_participant.sid not in ("", first_sid)
                and alice.room.connection_state == rtc.ConnectionState.CONN_CONNECTED,
                timeout=RESUME_TIMEOUT,
                what="alice's SDK to join again as a new participant",
            )
            await wait_until(
                lambda: bob.seen(
                    "participant_connected",
                    lambda e: e.participant.identity == "alice" and e.participant.sid != first_sid,
                ),
                what="bob to see the new alice",
            )
    finally:
        await proxy.close()


async def resumed_by_sdk(client: Client) -> None:
    await client.wait_event("reconnected", timeout=RESUME_TIMEOUT, what=f"{client.label} to reconnect")


async def test_the_sdks_signal_reconnect_scenario_resumes(server: Server) -> None:
    """The SDK's own test hook (`simulate_scenario(SIMULATE_SIGNAL_RECONNECT)`: it closes
    its WebSocket) ends in a resume of the same session."""
    room = unique("resume-sim")
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")
        sid = alice.room.local_participant.sid
        await alice.room.simulate_scenario(rtc.SimulateScenarioKind.SIMULATE_SIGNAL_RECONNECT)
        await resumed_by_sdk(alice)
        assert alice.room.local_participant.sid == sid
        assert not bob.seen("participant_disconnected")


# How long the server may take to notice that ICE is gone for both clients (str0m's
# consent timeout, ~15 s). A client that notices first resumes or restarts ICE by itself,
# which starts the server's timer for it again (seen: the second notice 33 s after the
# cut on a loaded machine), hence twice the timeout and room to spare.
MEDIA_LOSS_DETECT_TIMEOUT = 60.0


async def test_media_that_dies_under_a_live_websocket_comes_back(tmp_path: Path) -> None:
    """Every media datagram is dropped (a userspace shaper in front of the server's UDP
    ports; signaling goes straight to the server and stays up). The server notices ICE
    is gone and asks each client to resume (LeaveRequest RESUME, then the signal closes,
    as upstream does), keeping its session for a grace period. The link comes back
    within it and the tone is heard again. The python SDK resumes (same sid, ICE
    restarted) or, now and then, joins again in full and publishes anew; either way
    media must return without the test doing anything."""
    room = unique("media-dies")
    with shaped_server(tmp_path, "--rate", "0") as (server, shaper):
        async with Clients(server) as clients:
            alice, bob = await clients.meet(room, "alice", "bob")
            for c in (alice, bob):
                c.expect("reconnecting", "reconnected", "participant_disconnected")
            tone = ToneSender(440.0).start(MAX_SEND_SECONDS + MEDIA_LOSS_DETECT_TIMEOUT)
            probes: list[AudioProbe] = []
            try:
                publication = await publish_track(
                    alice, tone.track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
                )
                probes.append(AudioProbe((await wait_track_subscribed(bob, publication.sid)).args[0], "bob"))
                await probes[0].wait_for_tone(440.0, min_seconds=1.0, what="the tone before the cut")
                log_from = server.log_size()
                shaper.set("loss 100%")
                await wait_until(
                    lambda: server.log_since(log_from).count("media connection lost") >= 2,
                    timeout=MEDIA_LOSS_DETECT_TIMEOUT,
                    interval=0.2,
                    what="the server to notice both media connections are gone",
                )
                # Silent meanwhile: the shaper really cut the media.
                assert not probes[0].report(asyncio.get_running_loop().time() - 1.0).loud_seconds
                shaper.set("loss 0%")
                back_at = asyncio.get_running_loop().time()
                events_before = len(bob.events)

                def heard_again() -> bool:
                    for e in bob.events[events_before:]:
                        if e.name == "track_subscribed" and all(p.track is not e.args[0] for p in probes):
                            probes.append(AudioProbe(e.args[0], "bob (alice's track again)"))
                    return any(p.report(back_at).has_tone(440.0, min_seconds=1.0) for p in probes)

                await wait_until(
                    heard_again, timeout=RESUME_TIMEOUT, interval=0.2, what="the tone after the link came back"
                )
                assert alice.room.isconnected() and bob.room.isconnected()
                tone.check()
            finally:
                for p in probes:
                    await p.close()
                await tone.stop()
