"""Participants meeting in a room, through the python SDK (livekit.rtc)."""

from __future__ import annotations

import asyncio

import aiohttp
from livekit import api, rtc
from livekit.protocol import rtc as sig

from harness import EVENT_TIMEOUT, Clients, Server, participant_identities, unique, wait_until
from test_hostile import next_signal, send, ws_join

SETTLE = 2.0  # how long a change that must NOT arrive is given to arrive anyway
SELF_UPDATE_TIMEOUT = 15.0


async def self_update(what: str, call) -> None:
    """Await one of LocalParticipant.set_metadata/set_name/set_attributes. The
    SDK waits for the server's RequestResponse to the request."""
    try:
        await asyncio.wait_for(call, SELF_UPDATE_TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(
            f"{what} did not return within {SELF_UPDATE_TIMEOUT}s: does the server answer "
            "UpdateParticipantMetadata with a RequestResponse carrying its request_id?"
        ) from None


async def test_two_participants_see_each_other_and_the_leaver(server: Server) -> None:
    room = unique("meet")
    async with Clients(server) as clients:
        alice = await clients.join(
            room, "alice", name="Alice", metadata="alice-meta", attributes={"role": "host"}
        )
        # the local participant carries what alice's token says
        me = alice.room.local_participant
        assert (me.identity, me.name, me.metadata, dict(me.attributes)) == (
            "alice",
            "Alice",
            "alice-meta",
            {"role": "host"},
        )
        assert me.sid, "the server gave alice no participant sid"
        assert alice.room.name == room
        assert dict(alice.room.remote_participants) == {}, "alice should be alone at first"

        bob = await clients.join(
            room, "bob", name="Bob", metadata="bob-meta", attributes={"role": "guest", "n": "1"}
        )

        # alice is told that bob arrived, with what bob's token says
        joined = await alice.wait_event(
            "participant_connected",
            lambda e: e.participant.identity == "bob",
            what="alice to see bob join",
        )
        assert joined.participant.name == "Bob"
        assert joined.participant.metadata == "bob-meta"
        assert joined.participant.attributes == {"role": "guest", "n": "1"}
        assert joined.participant.sid == bob.room.local_participant.sid
        assert "bob" in alice.room.remote_participants

        # bob finds alice already there when he joins
        seen_alice = await wait_until(
            lambda: bob.room.remote_participants.get("alice"),
            what="alice among bob's remote participants",
        )
        assert seen_alice.name == "Alice"
        assert seen_alice.metadata == "alice-meta"
        assert dict(seen_alice.attributes) == {"role": "host"}
        assert seen_alice.sid == me.sid
        assert bob.room.local_participant.sid != me.sid

        # both are in the same room, by sid too
        alice_room_sid = await asyncio.wait_for(alice.room.sid, EVENT_TIMEOUT)
        bob_room_sid = await asyncio.wait_for(bob.room.sid, EVENT_TIMEOUT)
        assert alice_room_sid and alice_room_sid == bob_room_sid

        # bob leaves: alice sees him go
        await bob.disconnect()
        left = await alice.wait_event(
            "participant_disconnected",
            lambda e: e.participant.identity == "bob",
            what="alice to see bob leave",
        )
        assert left.participant.sid == joined.participant.sid
        await wait_until(
            lambda: "bob" not in alice.room.remote_participants,
            what="bob gone from alice's remote participants",
        )
        assert alice.room.isconnected(), "alice must stay connected when bob leaves"
        assert not alice.seen("disconnected")

        async with server.api() as lk:
            assert await participant_identities(lk, room) == ["alice"]


async def test_client_metadata_updates_reach_others_only_with_the_grant(server: Server) -> None:
    room = unique("self-meta")
    async with Clients(server) as clients:
        alice = await clients.join(
            room,
            "alice",
            name="Alice",
            metadata="m0",
            attributes={"role": "host"},
            can_update_own_metadata=True,
        )
        carol = await clients.join(
            room, "carol", name="Carol", metadata="c0", attributes={"role": "guest"}
        )
        bob = await clients.join(room, "bob", name="Bob")
        await wait_until(
            lambda: {"alice", "carol"} <= set(bob.room.remote_participants),
            what="bob to see alice and carol",
        )

        # alice may change her own metadata, name and attributes; bob sees each
        me = alice.room.local_participant
        await self_update("set_metadata", me.set_metadata("m1"))
        ev = await bob.wait_event(
            "participant_metadata_changed",
            lambda e: e.participant.identity == "alice" and e.args[2] == "m1",
            what="bob to see alice's new metadata",
        )
        assert ev.args[1] == "m0", "the old metadata should be the one from the token"
        # The SDK sends its current name and metadata along with each change, so
        # wait for alice to hear her own update back before the next one.
        await wait_until(lambda: me.metadata == "m1", what="alice to hear her own metadata back")

        await self_update("set_name", me.set_name("Alice Two"))
        ev = await bob.wait_event(
            "participant_name_changed",
            lambda e: e.participant.identity == "alice" and e.args[2] == "Alice Two",
            what="bob to see alice's new name",
        )
        assert ev.args[1] == "Alice"
        await wait_until(lambda: me.name == "Alice Two", what="alice to hear her own name back")

        await self_update("set_attributes", me.set_attributes({"mood": "happy"}))
        ev = await bob.wait_event(
            "participant_attributes_changed",
            lambda e: e.participant.identity == "alice" and e.args[0].get("mood") == "happy",
            what="bob to see alice's new attributes",
        )
        assert ev.participant.attributes.get("mood") == "happy"
        # attributes are merged: keys not in the update stay
        assert ev.participant.attributes.get("role") == "host"

        async with server.api() as lk:
            info = await lk.room.get_participant(api.RoomParticipantIdentity(room=room, identity="alice"))
            assert (info.metadata, info.name) == ("m1", "Alice Two")
            assert dict(info.attributes) == {"role": "host", "mood": "happy"}

            # carol has no canUpdateOwnMetadata: her changes go nowhere (the SDK sends them
            # and returns; a hang here is a bug too)
            for what, attempt in (
                ("set_metadata", carol.room.local_participant.set_metadata("c-hacked")),
                ("set_name", carol.room.local_participant.set_name("Mallory")),
                ("set_attributes", carol.room.local_participant.set_attributes({"role": "admin"})),
            ):
                await self_update(what, attempt)
            # The refusal itself, which the SDK does not surface: a RequestResponse naming
            # the request, NOT_ALLOWED.
            async with aiohttp.ClientSession() as http:
                ws = await ws_join(http, server, room, "dave")
                try:
                    await send(ws, update_metadata=sig.UpdateParticipantMetadata(metadata="x", request_id=77))
                    answer = (await next_signal(ws, "request_response")).request_response
                    assert answer.request_id == 77, answer
                    assert answer.reason == sig.RequestResponse.NOT_ALLOWED, answer
                finally:
                    await ws.close()
            await asyncio.sleep(SETTLE)

            def about_carol(e) -> bool:
                return e.participant is not None and e.participant.identity == "carol"

            for name in (
                "participant_metadata_changed",
                "participant_name_changed",
                "participant_attributes_changed",
            ):
                assert not bob.seen(name, about_carol), f"bob saw carol's refused {name}"
                assert not alice.seen(name, about_carol), f"alice saw carol's refused {name}"
            seen_carol = bob.room.remote_participants["carol"]
            assert (seen_carol.metadata, seen_carol.name) == ("c0", "Carol")
            assert dict(seen_carol.attributes) == {"role": "guest"}

            info = await lk.room.get_participant(api.RoomParticipantIdentity(room=room, identity="carol"))
            assert (info.metadata, info.name) == ("c0", "Carol")
            assert dict(info.attributes) == {"role": "guest"}
            assert carol.room.isconnected(), "a refused update should not cost carol her seat"


async def test_duplicate_identity_kicks_the_first_session(server: Server) -> None:
    room = unique("dup")
    async with Clients(server) as clients:
        first = await clients.join(room, "dup", name="First")
        first_sid = first.room.local_participant.sid

        second = await clients.join(room, "dup", name="Second")
        second_sid = second.room.local_participant.sid
        assert second.room.isconnected()
        assert second_sid and second_sid != first_sid

        await first.wait_event("disconnected", what="the first session to be disconnected")
        assert first.disconnect_reasons[0] == rtc.DisconnectReason.DUPLICATE_IDENTITY, (
            f"expected DUPLICATE_IDENTITY, got {first.disconnect_reasons}"
        )
        await wait_until(lambda: not first.room.isconnected(), what="the first room to be closed")

        # the second one stays, and is the only "dup" the server knows
        await asyncio.sleep(1.0)
        assert second.room.isconnected(), "the second session must survive the kick"
        assert not second.seen("disconnected")
        async with server.api() as lk:
            resp = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
            assert [(p.identity, p.sid) for p in resp.participants] == [("dup", second_sid)]
            assert resp.participants[0].name == "Second"
