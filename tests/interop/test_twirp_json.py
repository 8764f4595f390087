"""RoomService over Twirp with JSON bodies (protojson), by plain HTTP."""

from __future__ import annotations

import base64

import pytest

from harness import (
    EVENT_TIMEOUT,
    Clients,
    HttpAnswer,
    Server,
    http_request,
    service_token,
    twirp_json,
    unique,
    wait_track_subscribed,
    wait_until,
)
from test_media import inbound_audio_stopped, publish_tone


def assert_twirp_error(answer: HttpAnswer, status: int, code: str) -> None:
    assert answer.status == status, f"expected HTTP {status}, got {answer.status}: {answer.text}"
    try:
        body = answer.json()
    except ValueError:
        raise AssertionError(f"a Twirp error must be JSON, got: {answer.text!r}") from None
    assert body.get("code") == code, f"expected code {code!r}, got {body}"
    assert isinstance(body.get("msg"), str), f"a Twirp error carries a msg: {body}"


def test_create_and_list_rooms_in_json(server: Server) -> None:
    room = unique("json")
    token = service_token(roomCreate=True, roomList=True)

    created = twirp_json(
        server,
        "CreateRoom",
        {"name": room, "emptyTimeout": 120, "maxParticipants": 7, "metadata": "json-meta"},
        token,
    )
    assert created.status == 200, created.text
    assert created.headers.get("content-type", "").startswith("application/json")
    body = created.json()
    assert body["name"] == room
    assert body.get("sid"), f"no room sid in {body}"
    assert body.get("emptyTimeout") == 120
    assert body.get("maxParticipants") == 7
    assert body.get("metadata") == "json-meta"
    # protojson spells fields in lowerCamelCase
    assert "empty_timeout" not in body and "max_participants" not in body

    listed = twirp_json(server, "ListRooms", {"names": [room]}, token)
    assert listed.status == 200, listed.text
    assert listed.headers.get("content-type", "").startswith("application/json")
    rooms = listed.json().get("rooms", [])
    assert [(r["name"], r["sid"]) for r in rooms] == [(room, body["sid"])]
    assert rooms[0].get("maxParticipants") == 7

    everything = twirp_json(server, "ListRooms", {}, token)
    assert everything.status == 200, everything.text
    assert room in [r["name"] for r in everything.json().get("rooms", [])]

    nothing = twirp_json(server, "ListRooms", {"names": [unique("no-such-room")]}, token)
    assert nothing.status == 200, nothing.text
    assert nothing.json().get("rooms", []) == []

    deleted = twirp_json(server, "DeleteRoom", {"room": room}, token)
    assert deleted.status == 200, deleted.text
    gone = twirp_json(server, "ListRooms", {"names": [room]}, token)
    assert gone.json().get("rooms", []) == []


def test_no_token_is_unauthenticated(server: Server) -> None:
    answer = twirp_json(server, "ListRooms", {}, None)
    assert_twirp_error(answer, 401, "unauthenticated")


def test_badly_signed_token_is_unauthenticated(server: Server) -> None:
    token = service_token(api_secret="not-the-secret", roomList=True)
    assert_twirp_error(twirp_json(server, "ListRooms", {}, token), 401, "unauthenticated")
    token = service_token(api_key="no-such-key", roomList=True)
    assert_twirp_error(twirp_json(server, "ListRooms", {}, token), 401, "unauthenticated")


@pytest.mark.parametrize(
    "method,body,grants",
    [
        ("CreateRoom", {"name": "never-made"}, {"roomList": True}),
        ("ListRooms", {}, {"roomCreate": True}),
        ("DeleteRoom", {"room": "never-made"}, {"roomList": True}),
    ],
    ids=["create-without-roomCreate", "list-without-roomList", "delete-without-roomCreate"],
)
def test_missing_grant_is_permission_denied(server: Server, method: str, body: dict, grants: dict) -> None:
    answer = twirp_json(server, method, body, service_token(**grants))
    assert_twirp_error(answer, 403, "permission_denied")


def test_create_without_room_create_makes_no_room(server: Server) -> None:
    room = unique("refused")
    answer = twirp_json(server, "CreateRoom", {"name": room}, service_token(roomList=True))
    assert_twirp_error(answer, 403, "permission_denied")
    listed = twirp_json(server, "ListRooms", {"names": [room]}, service_token(roomList=True))
    assert listed.status == 200 and listed.json().get("rooms", []) == []


def test_get_missing_participant_is_not_found(server: Server) -> None:
    room = unique("ghosts")
    made = twirp_json(server, "CreateRoom", {"name": room}, service_token(roomCreate=True))
    assert made.status == 200, made.text
    answer = twirp_json(
        server,
        "GetParticipant",
        {"room": room, "identity": "nobody"},
        service_token(roomAdmin=True, room=room),
    )
    assert_twirp_error(answer, 404, "not_found")
    twirp_json(server, "DeleteRoom", {"room": room}, service_token(roomCreate=True))


def test_unknown_method_is_bad_route(server: Server) -> None:
    token = service_token(roomCreate=True, roomList=True, roomAdmin=True)
    answer = twirp_json(server, "NoSuchMethod", {}, token)
    assert_twirp_error(answer, 404, "bad_route")


def test_routing_errors_come_before_authentication(server: Server) -> None:
    # No token at all: an unknown method is still a bad route, not an auth failure.
    assert_twirp_error(twirp_json(server, "NoSuchMethod", {}, None), 404, "bad_route")
    # Only POST is a Twirp call; the error is Twirp's JSON too.
    answer = http_request(f"{server.http_url}/twirp/livekit.RoomService/ListRooms")
    assert_twirp_error(answer, 404, "bad_route")
    assert "POST" in answer.text


def test_room_admin_for_another_room_is_permission_denied(server: Server) -> None:
    room = unique("mine")
    made = twirp_json(server, "CreateRoom", {"name": room}, service_token(roomCreate=True))
    assert made.status == 200, made.text
    answer = twirp_json(
        server,
        "ListParticipants",
        {"room": room},
        service_token(roomAdmin=True, room=unique("someone-else")),
    )
    assert_twirp_error(answer, 403, "permission_denied")
    twirp_json(server, "DeleteRoom", {"room": room}, service_token(roomCreate=True))



def twirp_raw(server: Server, method: str, body: bytes, content_type: str, token: str | None) -> HttpAnswer:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http_request(
        f"{server.http_url}/twirp/livekit.RoomService/{method}", method="POST", body=body, headers=headers
    )


def test_undecodable_bodies_are_malformed(server: Server) -> None:
    token = service_token(roomList=True)
    assert_twirp_error(twirp_raw(server, "ListRooms", b"{not json", "application/json", token), 400, "malformed")
    # a JSON value of the wrong type for the field
    assert_twirp_error(
        twirp_raw(server, "ListRooms", b'{"names": 7}', "application/json", token), 400, "malformed"
    )
    # bytes that are no protobuf message (a field tag with a truncated length)
    assert_twirp_error(
        twirp_raw(server, "ListRooms", b"\x0a\xff", "application/protobuf", token), 400, "malformed"
    )


def test_an_unsupported_content_type_is_bad_route(server: Server) -> None:
    token = service_token(roomList=True)
    answer = twirp_raw(server, "ListRooms", b"{}", "text/plain", token)
    assert_twirp_error(answer, 404, "bad_route")
    assert "Content-Type" in answer.json()["msg"]


def test_a_request_missing_what_it_needs_is_invalid_argument(server: Server) -> None:
    room = unique("invalid")
    made = twirp_json(server, "CreateRoom", {"name": room}, service_token(roomCreate=True))
    assert made.status == 200, made.text
    try:
        answer = twirp_json(server, "SendData", {"room": room}, service_token(roomAdmin=True, room=room))
        assert_twirp_error(answer, 400, "invalid_argument")
        assert "data" in answer.json()["msg"]
    finally:
        twirp_json(server, "DeleteRoom", {"room": room}, service_token(roomCreate=True))


def test_authentication_comes_before_decoding_and_permissions_after(server: Server) -> None:
    """An unauthenticated caller learns nothing about its body (401 whatever it sent);
    an authenticated one is told its body is malformed before its grants are weighed,
    since the grant a call needs depends on the room named in the body."""
    garbage = b"{not json"
    assert_twirp_error(twirp_raw(server, "ListRooms", garbage, "application/json", None), 401, "unauthenticated")
    bad = service_token(api_secret="not-the-secret", roomList=True)
    assert_twirp_error(twirp_raw(server, "ListRooms", garbage, "application/json", bad), 401, "unauthenticated")
    no_grant = service_token(roomCreate=True)
    assert_twirp_error(twirp_raw(server, "ListRooms", garbage, "application/json", no_grant), 400, "malformed")
    assert_twirp_error(twirp_raw(server, "ListRooms", b"{}", "application/json", no_grant), 403, "permission_denied")


async def test_participant_methods_in_json(server: Server) -> None:
    """UpdateParticipant, UpdateRoomMetadata, MutePublishedTrack, UpdateSubscriptions,
    SendData and RemoveParticipant with JSON bodies, each checked where it lands: at the
    python SDK participants."""
    room = unique("json-admin")
    admin = service_token(roomAdmin=True, room=room)
    async with Clients(server) as clients:
        alice, bob = await clients.meet(room, "alice", "bob")
        sender, publication = await publish_tone(alice)
        try:
            await wait_track_subscribed(bob, publication.sid)

            answer = twirp_json(
                server, "UpdateParticipant",
                {"room": room, "identity": "alice", "metadata": "from-json", "name": "Alice J"}, admin,
            )
            assert answer.status == 200, answer.text
            assert (answer.json()["metadata"], answer.json()["name"]) == ("from-json", "Alice J")
            await bob.wait_event(
                "participant_metadata_changed",
                lambda e: e.participant.identity == "alice" and e.participant.metadata == "from-json",
            )

            answer = twirp_json(server, "UpdateRoomMetadata", {"room": room, "metadata": "room-json"}, admin)
            assert answer.status == 200, answer.text
            assert answer.json()["metadata"] == "room-json"
            await bob.wait_event("room_metadata_changed", lambda e: e.args[-1] == "room-json")

            answer = twirp_json(
                server, "MutePublishedTrack",
                {"room": room, "identity": "alice", "trackSid": publication.sid, "muted": True}, admin,
            )
            assert answer.status == 200, answer.text
            assert answer.json()["track"]["sid"] == publication.sid
            assert answer.json()["track"].get("muted") is True
            await bob.wait_event("track_muted", lambda e: e.args[-1].sid == publication.sid)

            answer = twirp_json(
                server, "SendData",
                {
                    "room": room,
                    "data": base64.b64encode(b"json data").decode(),
                    "kind": "RELIABLE",
                    "destinationIdentities": ["bob"],
                    "topic": "json",
                },
                admin,
            )
            assert answer.status == 200, answer.text
            got = await bob.wait_event("data_received")
            assert (got.args[0].data, got.args[0].topic) == (b"json data", "json")
            assert not alice.seen("data_received"), "data for bob reached alice"

            answer = twirp_json(
                server, "UpdateSubscriptions",
                {"room": room, "identity": "bob", "trackSids": [publication.sid], "subscribe": False},
                admin,
            )
            assert answer.status == 200, answer.text
            await wait_until(
                inbound_audio_stopped(bob), timeout=EVENT_TIMEOUT, interval=0.5,
                what="the server to stop sending alice's audio to bob",
            )

            answer = twirp_json(server, "RemoveParticipant", {"room": room, "identity": "bob"}, admin)
            assert answer.status == 200, answer.text
            await bob.wait_event("disconnected", what="bob to be removed")
            await alice.wait_event("participant_disconnected", lambda e: e.participant.identity == "bob")
        finally:
            await sender.stop()
