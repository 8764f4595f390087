"""The CLI against a running server: tokens verify with the official python TokenVerifier,
and `aviary room ...` acts on the server (checked through the python RoomService client)."""

from __future__ import annotations

import json
import subprocess

from livekit import api

from harness import Clients, Server, server_binary, unique, wait_until

CLI_TIMEOUT = 30


def cli(server: Server, *args: str) -> str:
    keys = ["--api-key", server.api_key, "--api-secret", server.api_secret]
    cmd, sub, rest = args[0], args[1], list(args[2:])
    # A token is only signed, so `token create` takes no --url.
    if cmd == "token":
        argv = [str(server_binary()), cmd, sub, *keys, *rest]
    else:
        argv = [str(server_binary()), cmd, "--url", server.ws_url, *keys, sub, *rest]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert out.returncode == 0, f"{argv} failed ({out.returncode}): {out.stderr}"
    return out.stdout


async def test_token_create_verifies_with_the_python_sdk(server: Server) -> None:
    jwt = cli(
        server, "token", "create", "--identity", "ada", "--room", "lab", "--name", "Ada",
        "--metadata", "m1", "--can-publish", "false", "--valid-for", "10m",
    ).strip()
    assert "\n" not in jwt and jwt.count(".") == 2, "the JWT alone on stdout"
    claims = api.TokenVerifier(server.api_key, server.api_secret).verify(jwt)
    assert claims.identity == "ada" and claims.name == "Ada" and claims.metadata == "m1"
    assert claims.video.room_join and claims.video.room == "lab"
    assert claims.video.can_publish is False
    admin = cli(server, "token", "create", "--identity", "ops", "--room", "lab", "--admin", "--list", "--create")
    grants = api.TokenVerifier(server.api_key, server.api_secret).verify(admin.strip()).video
    assert grants.room_admin and grants.room_list and grants.room_create and not grants.room_join
    # A CLI token joins a real room.
    async with Clients(server) as clients:
        room = unique("cli-join")
        token = cli(server, "token", "create", "--identity", "via-cli", "--room", room).strip()
        c = clients.new("via-cli")
        await c.connect(server.ws_url, token)
        assert c.room.local_participant.identity == "via-cli"


async def test_room_commands_act_on_the_server(server: Server) -> None:
    name = unique("cli-room")
    created = json.loads(
        cli(server, "room", "create", name, "--max-participants", "7", "--metadata", "first", "--json")
    )
    assert created["name"] == name and created["maxParticipants"] == 7 and created["sid"].startswith("RM_")
    async with server.api() as lk:
        rooms = (await lk.room.list_rooms(api.ListRoomsRequest(names=[name]))).rooms
        assert [r.max_participants for r in rooms] == [7]
        listed = json.loads(cli(server, "room", "list", "--json"))
        assert name in [r["name"] for r in listed]
        assert name in cli(server, "room", "list"), "the table names the room"

        cli(server, "room", "update-metadata", name, "second")
        rooms = (await lk.room.list_rooms(api.ListRoomsRequest(names=[name]))).rooms
        assert rooms[0].metadata == "second"

        async with Clients(server) as clients:
            await clients.join(name, "pat")
            people = json.loads(cli(server, "room", "participants", name, "--json"))
            assert [p["identity"] for p in people] == ["pat"]
            assert "pat" in cli(server, "room", "participants", name)
            cli(server, "room", "delete", name)
            await wait_until(
                lambda: clients._all[0].seen("disconnected"), what="pat to be disconnected"
            )
        rooms = (await lk.room.list_rooms(api.ListRoomsRequest(names=[name]))).rooms
        assert rooms == []


def run_cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    return subprocess.run(
        [str(server_binary()), *argv], capture_output=True, text=True, timeout=CLI_TIMEOUT,
        env={**base, **env},
    )


async def test_connection_settings_come_from_the_environment_or_follow_the_subcommand(
    server: Server,
) -> None:
    name = unique("cli-env")
    env = {
        "LIVEKIT_URL": server.ws_url,
        "LIVEKIT_API_KEY": server.api_key,
        "LIVEKIT_API_SECRET": server.api_secret,
    }
    out = run_cli(["room", "create", name, "--json"], env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["name"] == name
    # A token made from the environment's key verifies with it.
    out = run_cli(["token", "create", "--identity", "env", "--room", name], env)
    assert out.returncode == 0, out.stderr
    assert api.TokenVerifier(server.api_key, server.api_secret).verify(out.stdout.strip()).identity == "env"
    # Flags after the subcommand, as `lk` takes them, win over the environment.
    wrong = {**env, "LIVEKIT_API_SECRET": "not-the-secret"}
    refused = run_cli(["room", "list", "--json"], wrong)
    assert refused.returncode != 0, "a wrong secret from the environment is used and refused"
    out = run_cli(["room", "list", "--json", "--api-secret", server.api_secret], wrong)
    assert out.returncode == 0, out.stderr
    assert name in [r["name"] for r in json.loads(out.stdout)]
