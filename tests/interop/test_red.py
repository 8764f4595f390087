"""Opus with RED (RFC 2198 redundancy) end to end, counted by the server.

A publisher whose audio track does not disable RED is asked for it in the server's
answer, as upstream does, and the SDK then sends RED. A subscriber that negotiated RED
(the Python SDK) gets the packets as they came; one that did not (`aviary join`, plain
Opus) gets the primary encoding unwrapped. Both must hear the tone. A track published
with RED disabled goes as plain Opus.

libwebrtc's stats name Opus as the codec either way, so what went over the wire is read
from the server's own counters (`aviary_rtp_red_*` in /metrics), on a server of the
test's own.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from livekit import rtc

import media_fixtures as mf
from harness import (
    CONNECT_TIMEOUT,
    AudioProbe,
    Clients,
    Server,
    ToneSender,
    free_port,
    publish_track,
    unique,
    wait_track_subscribed,
    wait_until,
)
from test_cli_join import EXIT_SLACK, JoinRun, join_argv, join_command, wait_while_running  # noqa: F401
from test_metrics import scrape

TONE_HZ = mf.TONE_HZ
TONE_SECONDS = 1.5
RECORD_SECONDS = 6.0
# packets: 50 a second of Opus, so a second's worth and then some
ENOUGH = 60

RECEIVED = "aviary_rtp_red_received_total"
FORWARDED = "aviary_rtp_red_forwarded_total"
UNWRAPPED = "aviary_rtp_red_unwrapped_total"
ALL_RECEIVED = "aviary_rtp_received_total"


@pytest.mark.parametrize("red", [True, False], ids=["red", "red-disabled"])
async def test_red_audio_is_heard_by_a_red_and_a_plain_subscriber(
    tmp_path: Path, join_command: Path, red: bool
) -> None:
    port = free_port(socket.SOCK_STREAM)
    server = Server(tmp_path / "red-server.log", ["--prometheus-port", str(port)]).start()
    room = unique("red" if red else "no-red")
    out_dir = tmp_path / "recorded"
    out_dir.mkdir()
    try:
        async with Clients(server) as clients:
            alice = await clients.join(room, "alice")
            bob = await clients.join(room, "bob")
            tone = ToneSender(TONE_HZ, name="tone").start()
            probe = None
            try:
                publication = await publish_track(
                    alice,
                    tone.track,
                    rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, red=red),
                )
                subscribed = await wait_track_subscribed(bob, publication.sid)
                probe = AudioProbe(subscribed.args[0], "bob")
                await probe.wait_for_tone(TONE_HZ, min_seconds=TONE_SECONDS, what="alice's tone at bob")
                if red:
                    # bob negotiated RED: the packets reach it as they came
                    await wait_until(
                        lambda: (m := scrape(port)).get(RECEIVED, 0) >= ENOUGH
                        and m.get(FORWARDED, 0) >= ENOUGH,
                        what="RED from alice, forwarded as RED to bob",
                    )
                else:
                    await wait_until(
                        lambda: scrape(port).get(ALL_RECEIVED, 0) >= ENOUGH,
                        what="alice's audio at the server",
                    )
                m = scrape(port)
                assert m.get(UNWRAPPED, 0) == 0, f"nobody without RED is there yet: {m.get(UNWRAPPED)}"
                if not red:
                    assert m.get(RECEIVED, 0) == 0, f"RED was disabled, yet {m[RECEIVED]} RED packets came"

                # `aviary join` offers plain Opus only: RED must be unwrapped for it
                argv = join_argv(
                    server, room, "plain", "--duration", f"{RECORD_SECONDS:g}s", "--subscribe-to", str(out_dir)
                )
                async with JoinRun(argv) as run:
                    await wait_while_running(
                        run,
                        lambda: "plain" in alice.room.remote_participants,
                        timeout=CONNECT_TIMEOUT,
                        what="aviary join to arrive",
                    )
                    status = await run.wait(RECORD_SECONDS + EXIT_SLACK)
                assert status == 0, f"aviary join exited {status}\n{run.describe()}"
                m = scrape(port)
                if red:
                    assert m.get(UNWRAPPED, 0) >= ENOUGH, f"RED not unwrapped for aviary join: {m.get(UNWRAPPED)}"
                else:
                    assert (m.get(RECEIVED, 0), m.get(UNWRAPPED, 0)) == (0, 0), m
                tone.check()
            finally:
                if probe is not None:
                    await probe.close()
                await tone.stop()
    finally:
        server.stop()

    ogg = out_dir / f"alice-{publication.sid}.ogg"
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == [ogg.name], f"{out_dir} holds {files}, want {[ogg.name]}"
    assert mf.probe(ogg).codec == "opus", f"{ogg.name}: {mf.probe(ogg)}"
    report = mf.audio_tone(ogg, tmp_path)
    assert report.has_tone(TONE_HZ, min_seconds=2.0), f"{ogg.name} decoded: {report.describe()}"
