"""RoomService over Twirp/protobuf, through livekit.api.LiveKitAPI, with the
effects checked from connected python SDK clients."""

from __future__ import annotations

import asyncio

import pytest
from livekit import api, rtc

from harness import (
    EVENT_TIMEOUT,
    Clients,
    Server,
    participant_identities,
    room_names,
    unique,
    wait_until,
)


async def test_create_list_and_inspect_rooms_and_participants(server: Server) -> None:
    room = unique("svc")
    other = unique("svc-other")
    async with server.api() as lk, Clients(server) as clients:
        created = await lk.room.create_room(
            api.CreateRoomRequest(
                name=room, empty_timeout=120, max_participants=10, metadata="created-meta"
            )
        )
        assert created.name == room
        assert created.sid, "CreateRoom returned no room sid"
        assert created.empty_timeout == 120
        assert created.max_participants == 10
        assert created.metadata == "created-meta"

        # creating it again hands back the same room
        again = await lk.room.create_room(api.CreateRoomRequest(name=room))
        assert again.sid == created.sid

        await lk.room.create_room(api.CreateRoomRequest(name=other, empty_timeout=120))

        listed = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
        assert [(r.name, r.sid) for r in listed.rooms] == [(room, created.sid)]
        assert listed.rooms[0].metadata == "created-meta"
        assert sorted(await room_names(lk, [room, other, unique("no-such-room")])) == sorted(
            [room, other]
        )
        assert {room, other} <= set(await room_names(lk))

        alice = await clients.join(room, "alice", name="Alice", metadata="a-meta", attributes={"k": "a"})
        bob = await clients.join(room, "bob", name="Bob", metadata="b-meta", attributes={"k": "b"})

        # the clients landed in the room that CreateRoom made
        assert await asyncio.wait_for(alice.room.sid, EVENT_TIMEOUT) == created.sid
        assert alice.room.metadata == "created-meta"

        assert await participant_identities(lk, room) == ["alice", "bob"]
        assert await participant_identities(lk, other) == []

        info = await lk.room.get_participant(api.RoomParticipantIdentity(room=room, identity="bob"))
        assert info.identity == "bob"
        assert info.sid == bob.room.local_participant.sid
        assert (info.name, info.metadata, dict(info.attributes)) == ("Bob", "b-meta", {"k": "b"})

        async def counted() -> bool:
            rooms = (await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms
            return bool(rooms) and rooms[0].num_participants == 2

        await wait_until(counted, what="ListRooms to count 2 participants")

        with pytest.raises(api.ServerError) as err:
            await lk.room.get_participant(api.RoomParticipantIdentity(room=room, identity="nobody"))
        assert err.value.code == "not_found"
        assert err.value.status == 404

        await lk.room.delete_room(api.DeleteRoomRequest(room=other))
        assert await room_names(lk, [other]) == []


async def test_update_participant_reaches_everyone(server: Server) -> None:
    room = unique("upd")
    async with server.api() as lk, Clients(server) as clients:
        alice = await clients.join(room, "alice", name="Alice", metadata="m0", attributes={"a": "1"})
        bob = await clients.join(room, "bob", name="Bob")
        await wait_until(lambda: "alice" in bob.room.remote_participants, what="bob to see alice")

        updated = await lk.room.update_participant(
            api.UpdateParticipantRequest(
                room=room,
                identity="alice",
                metadata="from-api",
                name="Alice (api)",
                attributes={"team": "blue"},
            )
        )
        assert updated.identity == "alice"
        assert (updated.metadata, updated.name) == ("from-api", "Alice (api)")
        assert dict(updated.attributes).get("team") == "blue"

        def about_alice(e) -> bool:
            return e.participant is not None and e.participant.identity == "alice"

        # everyone hears it, alice (about herself) included
        for client in (alice, bob):
            await client.wait_event(
                "participant_metadata_changed",
                lambda e: about_alice(e) and e.args[2] == "from-api",
                what=f"{client.label} to see alice's metadata from the API",
            )
            await client.wait_event(
                "participant_name_changed",
                lambda e: about_alice(e) and e.args[2] == "Alice (api)",
                what=f"{client.label} to see alice's name from the API",
            )
            await client.wait_event(
                "participant_attributes_changed",
                lambda e: about_alice(e) and e.args[0].get("team") == "blue",
                what=f"{client.label} to see alice's attributes from the API",
            )
        assert alice.room.local_participant.metadata == "from-api"
        assert bob.room.remote_participants["alice"].metadata == "from-api"

        # a permission change, with no metadata or name in the request
        before = await lk.room.get_participant(api.RoomParticipantIdentity(room=room, identity="alice"))
        assert before.permission.can_publish, "a default token lets alice publish"
        updated = await lk.room.update_participant(
            api.UpdateParticipantRequest(
                room=room,
                identity="alice",
                permission=api.ParticipantPermission(
                    can_subscribe=True,
                    can_publish=False,
                    can_publish_data=False,
                    can_update_metadata=True,
                ),
            )
        )
        assert not updated.permission.can_publish
        assert not updated.permission.can_publish_data
        assert updated.permission.can_update_metadata
        ev = await alice.wait_event(
            "participant_permissions_changed",
            lambda e: about_alice(e) and not e.args[1].can_publish,
            what="alice to be told her new permissions",
        )
        assert ev.args[1].can_subscribe and ev.args[1].can_update_metadata
        assert not alice.room.local_participant.permissions.can_publish

        after = await lk.room.get_participant(api.RoomParticipantIdentity(room=room, identity="alice"))
        assert not after.permission.can_publish
        assert after.permission.can_update_metadata
        # fields left empty in the request are left alone
        assert (after.metadata, after.name) == ("from-api", "Alice (api)")
        assert alice.room.isconnected() and bob.room.isconnected()


async def test_update_room_metadata_reaches_clients(server: Server) -> None:
    room = unique("roommeta")
    async with server.api() as lk, Clients(server) as clients:
        await lk.room.create_room(api.CreateRoomRequest(name=room, metadata="r0"))
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        assert alice.room.metadata == "r0"

        answer = await lk.room.update_room_metadata(
            api.UpdateRoomMetadataRequest(room=room, metadata="r1")
        )
        assert answer.name == room and answer.metadata == "r1"

        for client in (alice, bob):
            ev = await client.wait_event(
                "room_metadata_changed",
                lambda e: e.args[1] == "r1",
                what=f"{client.label} to see the new room metadata",
            )
            assert ev.args[0] == "r0"
            assert client.room.metadata == "r1"

        listed = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
        assert listed.rooms[0].metadata == "r1"


async def test_remove_participant_disconnects_that_client(server: Server) -> None:
    room = unique("remove")
    async with server.api() as lk, Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        await wait_until(lambda: "bob" in alice.room.remote_participants, what="alice to see bob")

        await lk.room.remove_participant(api.RoomParticipantIdentity(room=room, identity="bob"))

        await bob.wait_event("disconnected", what="bob to be disconnected")
        assert bob.disconnect_reasons[0] == rtc.DisconnectReason.PARTICIPANT_REMOVED, (
            f"expected PARTICIPANT_REMOVED, got {bob.disconnect_reasons}"
        )
        await alice.wait_event(
            "participant_disconnected",
            lambda e: e.participant.identity == "bob",
            what="alice to see bob removed",
        )
        await wait_until(
            lambda: lk_ids_are(lk, room, ["alice"]), what="the server to list alice alone"
        )
        assert alice.room.isconnected(), "removing bob must not disconnect alice"
        assert not alice.seen("disconnected")

        with pytest.raises(api.ServerError) as err:
            await lk.room.remove_participant(api.RoomParticipantIdentity(room=room, identity="bob"))
        assert err.value.code == "not_found"


async def lk_ids_are(lk: api.LiveKitAPI, room: str, expected: list[str]) -> bool:
    return await participant_identities(lk, room) == expected


async def test_delete_room_disconnects_everyone(server: Server) -> None:
    room = unique("delete")
    async with server.api() as lk, Clients(server) as clients:
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")
        assert await room_names(lk, [room]) == [room]

        await lk.room.delete_room(api.DeleteRoomRequest(room=room))

        for client in (alice, bob):
            await client.wait_event("disconnected", what=f"{client.label} to be disconnected")
            assert client.disconnect_reasons[0] == rtc.DisconnectReason.ROOM_DELETED, (
                f"{client.label}: expected ROOM_DELETED, got {client.disconnect_reasons}"
            )
        await wait_until(
            lambda: not alice.room.isconnected() and not bob.room.isconnected(),
            what="both rooms to be closed",
        )
        assert await room_names(lk, [room]) == []
