"""The Egress and Ingress Twirp services as the server SDK (`livekit-api`) calls them. Aviary
produces no egress output and takes no ingress yet: every start or create is refused at
once with `unimplemented` and a reason, nothing is listed, unknown ids are not found, and
the grants upstream requires are checked."""

from __future__ import annotations

import pytest
from livekit import api

from harness import Server, service_token, twirp_json, unique
from test_twirp_json import assert_twirp_error


async def unimplemented(call) -> str:
    with pytest.raises(api.TwirpError) as e:
        await call
    assert e.value.code == "unimplemented", e.value
    assert e.value.status == 501, e.value
    return e.value.message


async def test_egress_starts_are_refused_with_the_reason_and_nothing_is_listed(server: Server) -> None:
    room = unique("egress")
    async with server.api() as lk:
        why = await unimplemented(lk.egress.start_track_egress(api.TrackEgressRequest(
            room_name=room, track_id="TR_x", file=api.DirectFileOutput(filepath="/tmp/x.ogg"))))
        assert "track egress" in why and "not implemented" in why, why
        why = await unimplemented(lk.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
            room_name=room, file_outputs=[api.EncodedFileOutput(filepath="/tmp/x.mp4")])))
        assert "room composite" in why and "compositing" in why, why
        await unimplemented(lk.egress.start_track_composite_egress(api.TrackCompositeEgressRequest(
            room_name=room, audio_track_id="TR_a")))
        await unimplemented(lk.egress.start_participant_egress(api.ParticipantEgressRequest(
            room_name=room, identity="alice")))
        await unimplemented(lk.egress.start_web_egress(api.WebEgressRequest(url="http://127.0.0.1:9/")))
        listed = await lk.egress.list_egress(api.ListEgressRequest(room_name=room))
        assert list(listed.items) == []
        with pytest.raises(api.TwirpError) as e:
            await lk.egress.stop_egress(api.StopEgressRequest(egress_id="EG_nope"))
        assert e.value.code == "not_found" and "EG_nope" in e.value.message, e.value


async def test_ingress_creation_is_refused_with_the_reason_and_nothing_is_listed(server: Server) -> None:
    async with server.api() as lk:
        why = await unimplemented(lk.ingress.create_ingress(api.CreateIngressRequest(
            input_type=api.IngressInput.WHIP_INPUT, name="obs", room_name=unique("ingress"),
            participant_identity="obs")))
        assert "WHIP" in why, why
        why = await unimplemented(lk.ingress.create_ingress(api.CreateIngressRequest(
            input_type=api.IngressInput.RTMP_INPUT, name="obs")))
        assert "transcoding" in why, why
        listed = await lk.ingress.list_ingress(api.ListIngressRequest())
        assert list(listed.items) == []
        with pytest.raises(api.TwirpError) as e:
            await lk.ingress.delete_ingress(api.DeleteIngressRequest(ingress_id="IN_nope"))
        assert e.value.code == "not_found", e.value


def test_egress_needs_room_record_and_ingress_needs_ingress_admin(server: Server) -> None:
    admin = service_token(roomAdmin=True, roomCreate=True, roomList=True, room="r")
    answer = twirp_json(server, "ListEgress", {}, admin, service="livekit.Egress")
    assert_twirp_error(answer, 403, "permission_denied")
    assert "roomRecord" in answer.json()["msg"]
    answer = twirp_json(server, "ListIngress", {}, admin, service="livekit.Ingress")
    assert_twirp_error(answer, 403, "permission_denied")
    assert "ingressAdmin" in answer.json()["msg"]
    # With the grants, JSON as well as protobuf.
    answer = twirp_json(server, "ListEgress", {}, service_token(roomRecord=True), service="livekit.Egress")
    assert answer.status == 200 and answer.json().get("items", []) == [], answer.text
    # Routing errors come before authentication, as in RoomService.
    assert_twirp_error(twirp_json(server, "Nope", {}, None, service="livekit.Egress"), 404, "bad_route")
