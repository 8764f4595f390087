"""When rooms close on their own, and how many may join them."""

from __future__ import annotations

import asyncio
import os
import signal

from livekit import api, rtc

from harness import (
    ROOM_CLOSE_TIMEOUT,
    Clients,
    Server,
    participant_identities,
    room_names,
    unique,
    wait_until,
)


async def _gone(lk: api.LiveKitAPI, room: str) -> bool:
    return await room_names(lk, [room]) == []


async def test_empty_timeout_closes_a_room_nobody_joined(server: Server) -> None:
    short = unique("empty-short")
    long = unique("empty-long")
    async with server.api() as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=short, empty_timeout=1))
        await lk.room.create_room(api.CreateRoomRequest(name=long, empty_timeout=600))
        assert await room_names(lk, [short]) == [short], "the room should exist right after CreateRoom"

        await wait_until(
            lambda: _gone(lk, short),
            timeout=ROOM_CLOSE_TIMEOUT,
            interval=0.25,
            what=f"{short} (empty_timeout=1) to close",
        )
        # the control: a room with a long empty_timeout is still there
        assert await room_names(lk, [long]) == [long], "a room with empty_timeout=600 closed early"
        await lk.room.delete_room(api.DeleteRoomRequest(room=long))


async def test_departure_timeout_closes_a_room_after_the_last_leaves(server: Server) -> None:
    room = unique("depart")
    async with server.api() as lk, Clients(server) as clients:
        await lk.room.create_room(
            api.CreateRoomRequest(name=room, empty_timeout=600, departure_timeout=1)
        )
        alice = await clients.join(room, "alice")
        bob = await clients.join(room, "bob")

        # one leaving is not the last leaving
        await bob.disconnect()
        await wait_until(
            lambda: _ids(lk, room, ["alice"]), what="the server to list alice alone"
        )
        await asyncio.sleep(2.5)
        assert await room_names(lk, [room]) == [room], "the room closed while alice was in it"
        assert alice.room.isconnected()

        await alice.disconnect()
        await wait_until(
            lambda: _gone(lk, room),
            timeout=ROOM_CLOSE_TIMEOUT,
            interval=0.25,
            what=f"{room} (departure_timeout=1) to close after the last participant left",
        )


async def _ids(lk: api.LiveKitAPI, room: str, expected: list[str]) -> bool:
    try:
        return await participant_identities(lk, room) == expected
    except api.ServerError as e:
        # a closed room has nobody in it
        if e.code == "not_found" and expected == []:
            return True
        raise


async def test_configured_timeouts_apply_to_rooms(short_server: Server) -> None:
    """The server started with --config-body 'room: {empty_timeout: 2,
    departure_timeout: 1}' applies those to rooms that do not set their own:
    a room made by joining lives while someone is in it and closes after the
    last one leaves; a room made by CreateRoom closes with nobody joining."""
    server = short_server
    joined_room = unique("cfg-joined")
    created_room = unique("cfg-created")
    async with server.api() as lk, Clients(server) as clients:
        alice = await clients.join(joined_room, "alice")
        assert await room_names(lk, [joined_room]) == [joined_room], "joining should make the room"

        await lk.room.create_room(api.CreateRoomRequest(name=created_room))
        await wait_until(
            lambda: _gone(lk, created_room),
            timeout=ROOM_CLOSE_TIMEOUT,
            interval=0.25,
            what=f"{created_room} to close after the configured empty_timeout (2 s)",
        )

        # longer than both configured timeouts: an occupied room stays
        await asyncio.sleep(1.0)
        assert await room_names(lk, [joined_room]) == [joined_room]
        assert alice.room.isconnected()

        await alice.disconnect()
        await wait_until(
            lambda: _gone(lk, joined_room),
            timeout=ROOM_CLOSE_TIMEOUT,
            interval=0.25,
            what=f"{joined_room} to close after the configured departure_timeout (1 s)",
        )


async def test_max_participants_refuses_the_one_too_many(server: Server) -> None:
    room = unique("max1")
    async with server.api() as lk, Clients(server) as clients:
        await lk.room.create_room(api.CreateRoomRequest(name=room, max_participants=1))
        alice = await clients.join(room, "alice")

        await clients.expect_refused(server.token("bob", room), label="bob")

        await asyncio.sleep(1.0)
        assert alice.room.isconnected(), "the first participant must stay"
        assert not alice.seen("disconnected")
        assert not alice.seen("participant_connected"), "alice saw someone join a full room"
        assert await participant_identities(lk, room) == ["alice"]

        # once alice has left, the seat is free again
        await alice.disconnect()
        await wait_until(lambda: _ids(lk, room, []), what="the server to see alice leave")
        carol = await clients.join(room, "carol")
        assert carol.room.isconnected()


async def test_a_client_rejoins_after_the_server_restarts(tmp_path) -> None:
    """The SDK loses its server and finds a new one with none of the old state on the same
    address: it joins again by itself (a resume, `reconnect=1`, is answered with a
    LeaveRequest asking for a full reconnect; see test_robustness for that answer)."""
    server = Server(tmp_path / "restart.log").start()
    try:
        room = unique("restart")
        async with Clients(server) as clients:
            ada = await clients.join(room, "ada")
            ada.expect("reconnecting", "reconnected")  # the test restarts the server
            first_sid = ada.room.local_participant.sid
            os.kill(server.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)
            server.start()  # the same ports, none of the old state

            async def back() -> bool:
                async with server.api() as lk:
                    try:
                        people = await lk.room.list_participants(
                            api.ListParticipantsRequest(room=room)
                        )
                    except api.TwirpError:
                        return False  # no such room yet
                return [p.identity for p in people.participants] == ["ada"]

            await wait_until(
                back, timeout=45, interval=0.5, what="ada to join the new server by herself"
            )
            await wait_until(
                lambda: ada.room.connection_state == rtc.ConnectionState.CONN_CONNECTED,
                timeout=15,
                what="ada's SDK to report the connection back",
            )
            assert ada.room.local_participant.sid != first_sid, "a new session, not a resume"
    finally:
        server.stop()
