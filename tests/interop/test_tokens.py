"""Join tokens: /rtc/validate, the WebSocket upgrade on /rtc, and the SDK's
connect, for a good token and for each way a token can be bad."""

from __future__ import annotations

import time
from typing import Callable

import jwt
import pytest
from livekit import api

from harness import (
    API_SECRET,
    TOKEN_TRANSPORTS,
    Clients,
    Server,
    hand_made_jwt,
    http_request,
    join_claims,
    unique,
    validate,
    websocket_upgrade,
)

HOUR = 3600  # well past the server's 60 s leeway
LEEWAY = 60  # seconds a token's exp/nbf may be off, as upstream (jsonwebtoken's default)


def _bad_signature(room: str) -> str:
    return hand_made_jwt(join_claims("mallory", room), secret="not-the-secret")


def _unknown_api_key(room: str) -> str:
    return hand_made_jwt(join_claims("mallory", room, api_key="no-such-key"))


def _expired(room: str) -> str:
    now = int(time.time())
    return hand_made_jwt({**join_claims("mallory", room), "nbf": now - 2 * HOUR, "exp": now - HOUR})


def _not_yet_valid(room: str) -> str:
    now = int(time.time())
    return hand_made_jwt({**join_claims("mallory", room), "nbf": now + HOUR, "exp": now + 2 * HOUR})


def _no_room_join_grant(room: str) -> str:
    return hand_made_jwt({**join_claims("mallory", room), "video": {"room": room}})


def _no_room_in_grant(room: str) -> str:
    return hand_made_jwt({**join_claims("mallory", room), "video": {"roomJoin": True}})


def _empty_identity(room: str) -> str:
    return hand_made_jwt({**join_claims("mallory", room), "sub": ""})


def _not_a_jwt(room: str) -> str:
    return "this.is-not-a.jwt"


def _expired_past_leeway(room: str) -> str:
    now = int(time.time())
    return hand_made_jwt({**join_claims("mallory", room), "nbf": now - HOUR, "exp": now - 2 * LEEWAY})


def _hs512(room: str) -> str:
    # signed with the right secret, by another algorithm than the HS256 LiveKit uses
    return jwt.encode(join_claims("mallory", room), API_SECRET, algorithm="HS512")


def _alg_none(room: str) -> str:
    return jwt.encode(join_claims("mallory", room), None, algorithm="none")


BAD_TOKENS: dict[str, Callable[[str], str]] = {
    "bad-signature": _bad_signature,
    "unknown-api-key": _unknown_api_key,
    "expired": _expired,
    "not-yet-valid": _not_yet_valid,
    "no-roomJoin-grant": _no_room_join_grant,
    "no-room-in-grant": _no_room_in_grant,
    "empty-identity": _empty_identity,
    "not-a-jwt": _not_a_jwt,
    "expired-past-the-leeway": _expired_past_leeway,
    "hs512": _hs512,
    "alg-none": _alg_none,
}


def _good(room: str) -> str:
    # the same hand-made path as the bad ones, unspoiled
    return hand_made_jwt(join_claims("goodie", room))


@pytest.mark.parametrize("via", TOKEN_TRANSPORTS)
def test_good_hand_made_token_passes_validate_and_upgrade(server: Server, via: str) -> None:
    """The control for the bad-token cases: the same hand-made path, unspoiled,
    is accepted both ways a client can hand a token over."""
    room = unique("tok-good")
    answer = validate(server, _good(room), via=via)
    assert answer.status == 200, f"/rtc/validate refused a good token: {answer.status} {answer.text}"

    status, head = websocket_upgrade(server, _good(room), via=via)
    assert status == 101, f"a good token's WebSocket upgrade was answered with:\n{head}"


def _expired_within_leeway(room: str) -> str:
    now = int(time.time())
    return hand_made_jwt({**join_claims("goodie", room), "nbf": now - HOUR, "exp": now - LEEWAY // 3})


def _not_before_within_leeway(room: str) -> str:
    now = int(time.time())
    return hand_made_jwt({**join_claims("goodie", room), "nbf": now + LEEWAY // 3, "exp": now + HOUR})


@pytest.mark.parametrize("make", [_expired_within_leeway, _not_before_within_leeway], ids=["exp", "nbf"])
def test_a_clock_off_by_less_than_the_leeway_is_accepted(server: Server, make: Callable[[str], str]) -> None:
    room = unique("tok-leeway")
    answer = validate(server, make(room))
    assert answer.status == 200, f"/rtc/validate refused a token within the leeway: {answer.status} {answer.text}"
    status, head = websocket_upgrade(server, make(room))
    assert status == 101, f"a token within the leeway was answered with:\n{head}"


def test_health_endpoint(server: Server) -> None:
    answer = http_request(server.http_url + "/")
    assert answer.status == 200
    assert answer.text.strip() == "OK"


def test_rtc_v1_is_not_found(server: Server) -> None:
    # the SDK tries /rtc/v1 first and falls back to /rtc on a 404
    status, head = websocket_upgrade(server, _good(unique("tok-v1")), path="/rtc/v1", via="header")
    assert status == 404, f"/rtc/v1 should be 404, got:\n{head}"


@pytest.mark.parametrize("via", TOKEN_TRANSPORTS)
@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token_fails_validate(server: Server, case: str, via: str) -> None:
    answer = validate(server, BAD_TOKENS[case](unique("tok")), via=via)
    assert answer.status == 401, f"{case}: /rtc/validate answered {answer.status} {answer.text!r}"
    assert answer.text.strip(), f"{case}: /rtc/validate gave no reason"


@pytest.mark.parametrize("via", TOKEN_TRANSPORTS)
@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token_refused_before_upgrade(server: Server, case: str, via: str) -> None:
    status, head = websocket_upgrade(server, BAD_TOKENS[case](unique("tok")), via=via)
    assert status == 401, f"{case}: the WebSocket upgrade was answered with:\n{head}"


def test_missing_token_is_refused(server: Server) -> None:
    answer = validate(server, None)
    assert answer.status == 401, f"/rtc/validate without a token answered {answer.status}"
    assert answer.text.strip()
    status, head = websocket_upgrade(server, None)
    assert status == 401, f"a WebSocket upgrade without a token was answered with:\n{head}"


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_token_connect_raises(server: Server, case: str) -> None:
    room = unique("tok")
    async with Clients(server) as clients:
        error = await clients.expect_refused(BAD_TOKENS[case](room), label=case)
        # the SDK reports the HTTP status the upgrade was refused with
        assert "401" in str(error), f"{case}: expected a refusal with 401, got {error!r}"

        # and nobody got into the room
        async with server.api() as lk:
            try:
                resp = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
                assert list(resp.participants) == []
            except api.ServerError as e:
                assert e.code == "not_found", f"unexpected error listing {room}: {e}"


async def test_good_token_connects(server: Server) -> None:
    """The control for test_bad_token_connect_raises: the same hand-made path
    without the spoiling joins fine."""
    room = unique("tok-good")
    async with Clients(server) as clients:
        client = await clients.join_with_token(_good(room), label="goodie")
        assert client.room.isconnected()
        assert client.room.local_participant.identity == "goodie"

