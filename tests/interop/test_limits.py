"""`limit.*` from the configuration, enforced against the SDKs as upstream enforces them:
a node carrying `limit.num_tracks` refuses new joins with 503 until tracks end; a
subscriber at `limit.subscription_limit_audio` waits for a place (upstream retries the
subscription rather than failing it) and gets the waiting track once one frees;
`limit.max_metadata_size` refuses RoomService updates with Twirp `invalid_argument`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from livekit import api

from harness import (
    AudioProbe,
    Clients,
    Server,
    ToneSender,
    publish_track,
    unique,
    validate,
    wait_track_subscribed,
    wait_until,
    within,
)
from test_media import EVENT_TIMEOUT, SETTLE, TONE_SECONDS, audio_options, publish_tone

OTHER_HZ = 660.0


def limited_server(tmp_path: Path, name: str, limits: str) -> Server:
    return Server(tmp_path / f"{name}.log", ["--config-body", f"limit: {{{limits}}}"]).start()


async def test_num_tracks_refuses_joins_with_503_until_tracks_end(tmp_path: Path) -> None:
    # alice's track and bob's subscription to it are the node's two tracks
    server = limited_server(tmp_path, "num-tracks", "num_tracks: 2")
    try:
        room = unique("num-tracks")
        async with Clients(server) as clients:
            alice = await clients.join(room, "alice")
            bob = await clients.join(room, "bob")
            carol_token = server.token("carol", room)
            assert validate(server, carol_token).status == 200, "room for carol before any track"
            sender, publication = await publish_tone(alice)
            try:
                await wait_track_subscribed(bob, publication.sid)
                answer = await wait_until(
                    lambda: (a := validate(server, carol_token)).status == 503 and a,
                    what="joins to be refused once the node carries 2 tracks",
                )
                assert b"num_tracks" in answer.body, answer
                refused = await clients.expect_refused(carol_token, "carol")
                assert "503" in str(refused) or "unavailable" in str(refused).lower(), refused
                await within(
                    alice.room.local_participant.unpublish_track(publication.sid),
                    EVENT_TIMEOUT,
                    "unpublish_track",
                )
            finally:
                await sender.stop()
            await wait_until(
                lambda: validate(server, carol_token).status == 200,
                what="joins to be taken again once the tracks ended",
            )
            carol = await clients.join(room, "carol")
            assert carol.room.isconnected()
    finally:
        server.stop()


async def test_a_subscriber_at_its_audio_limit_gets_the_waiting_track_when_one_ends(
    tmp_path: Path,
) -> None:
    server = limited_server(tmp_path, "sub-limit", "subscription_limit_audio: 1")
    try:
        room = unique("sub-limit")
        async with Clients(server) as clients:
            alice = await clients.join(room, "alice")
            bob = await clients.join(room, "bob")
            low = ToneSender(440.0, name="low").start()
            high = ToneSender(OTHER_HZ, name="high").start()
            probes: list[AudioProbe] = []
            try:
                pubs = {
                    "alice": await publish_track(alice, low.track, audio_options()),
                    "bob": await publish_track(bob, high.track, audio_options()),
                }
                hz = {"alice": 440.0, "bob": OTHER_HZ}
                carol = await clients.join(room, "carol")
                first = await wait_until(
                    lambda: carol.seen("track_subscribed"), what="carol's first track"
                )
                await asyncio.sleep(SETTLE)
                got = carol.seen("track_subscribed")
                assert len(got) == 1, f"carol may receive one audio track, got {len(got)}"
                owner = first[0].participant.identity
                probes.append(AudioProbe(first[0].args[0], f"carol ({owner})"))
                await probes[-1].wait_for_tone(hz[owner], min_seconds=TONE_SECONDS, what=f"{owner}'s tone")

                # its publisher unpublishes: the other track takes the place
                other = "bob" if owner == "alice" else "alice"
                publisher = alice if owner == "alice" else bob
                await within(
                    publisher.room.local_participant.unpublish_track(pubs[owner].sid),
                    EVENT_TIMEOUT,
                    "unpublish_track",
                )
                second = await wait_track_subscribed(carol, pubs[other].sid)
                probes.append(AudioProbe(second.args[0], f"carol ({other})"))
                await probes[-1].wait_for_tone(hz[other], min_seconds=TONE_SECONDS, what=f"{other}'s tone")
            finally:
                for p in probes:
                    await p.close()
                await low.stop()
                await high.stop()
    finally:
        server.stop()


async def test_metadata_over_max_metadata_size_is_invalid_argument(tmp_path: Path) -> None:
    server = limited_server(tmp_path, "metadata", "max_metadata_size: 64")
    try:
        room = unique("metadata")
        async with Clients(server) as clients:
            await clients.join(room, "alice")
            async with server.api() as lk:
                small = await lk.room.update_participant(
                    api.UpdateParticipantRequest(room=room, identity="alice", metadata="m" * 64)
                )
                assert small.metadata == "m" * 64
                for call in (
                    lk.room.update_participant(
                        api.UpdateParticipantRequest(room=room, identity="alice", metadata="m" * 65)
                    ),
                    lk.room.update_room_metadata(
                        api.UpdateRoomMetadataRequest(room=room, metadata="r" * 65)
                    ),
                ):
                    with pytest.raises(api.TwirpError) as refused:
                        await call
                    assert refused.value.code == "invalid_argument", refused.value
                    assert "max_metadata_size" in refused.value.message, refused.value
                people = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
                assert [p.metadata for p in people.participants] == ["m" * 64], "refusals change nothing"
    finally:
        server.stop()
