"""`aviary serve` configured as livekit-server is: config file or body, keys from flags,
the environment or a key file, and a clear one-line refusal (exit status 2) for a config
it cannot use. Checked from outside the process, as a user starts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness import (
    NODE_IP,
    AudioProbe,
    Clients,
    Server,
    free_udp_range,
    make_token,
    server_binary,
    unique,
    validate,
    wait_track_subscribed,
)
from test_media import TONE_HZ, TONE_SECONDS, publish_tone

KEY, SECRET = "APIconfigtest", "a-secret-that-is-long-enough-for-hs256-0123"


def refused(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Runs `aviary serve ARGS`, expects exit status 2, returns its one line of stderr."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    out = subprocess.run(
        [str(server_binary()), "serve", "--port", "0", *args],
        capture_output=True, text=True, timeout=30, env={**base, **(env or {})}, cwd=tmp_path,
    )
    assert out.returncode == 2, f"exit {out.returncode}: {out.stderr}"
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, f"one line of error, got: {out.stderr}"
    return lines[0]


def test_unusable_configs_are_refused_with_one_line(tmp_path: Path) -> None:
    assert "API keys" in refused(tmp_path)  # no keys outside dev mode
    assert "port" in refused(tmp_path, "--dev", "--config-body", "port: lots\n")
    line = refused(tmp_path, "--dev", "--config-body", "logging:\n  level: chatty\n")
    assert "logging.level" in line and "chatty" in line
    assert "bind_addresses" in refused(tmp_path, "--dev", "--bind", "not-an-ip")
    assert "port_range_end" in refused(
        tmp_path, "--dev", "--config-body", "rtc:\n  port_range_start: 50000\n  port_range_end: 40000\n"
    )
    missing = tmp_path / "nope.yaml"
    assert str(missing) in refused(tmp_path, "--dev", "--config", str(missing))
    assert "empty secret" in refused(tmp_path, "--keys", f"{KEY}: ''")


def start_plain(tmp_path: Path, name: str, args: list[str], env: dict[str, str]) -> Server:
    server = Server(tmp_path / f"{name}.log", args)
    server.dev = False
    server.env = env
    server.api_key, server.api_secret = KEY, SECRET
    return server.start()


def token_for(server: Server, key: str, secret: str, room: str) -> str:
    return make_token("someone", room, api_key=key, api_secret=secret)


@pytest.mark.parametrize("source", ["LIVEKIT_KEYS", "--keys", "--key-file", "LIVEKIT_CONFIG"])
def test_keys_from_every_source(tmp_path: Path, source: str) -> None:
    args: list[str] = []
    env: dict[str, str] = {}
    if source == "LIVEKIT_KEYS":
        env["LIVEKIT_KEYS"] = f"{KEY}: {SECRET}"
    elif source == "--keys":
        args = ["--keys", f"{KEY}: {SECRET}"]
    elif source == "--key-file":
        f = tmp_path / "keys.yaml"
        f.write_text(f"{KEY}: {SECRET}\n")
        args = ["--key-file", str(f)]
    else:
        env["LIVEKIT_CONFIG"] = f"keys:\n  {KEY}: {SECRET}\n"
    server = start_plain(tmp_path, source.strip("-").lower(), args, env)
    try:
        room = unique("keys")
        assert validate(server, token_for(server, KEY, SECRET, room)).status == 200
        # Not in dev mode: the dev key is not accepted.
        assert validate(server, token_for(server, "devkey", "secret", room)).status == 401
    finally:
        server.stop()


def test_unknown_keys_warn_and_the_body_wins_over_the_file(tmp_path: Path) -> None:
    f = tmp_path / "livekit.yaml"
    f.write_text("keys:\n  filekey: a-secret-from-the-file-0123456789abcdef\n")
    body = f"keys:\n  {KEY}: {SECRET}\nroom:\n  auto_create: false\nfrobnicate: 3\n"
    server = start_plain(tmp_path, "body", ["--config", str(f), "--config-body", body], {})
    try:
        log = server.log_path.read_text()
        assert "frobnicate" in log and "unknown" in log.lower(), "a warning names the key"
        # The body's key and room settings are in force, not the file's key.
        assert validate(server, token_for(server, KEY, SECRET, "r")).status == 404  # no auto_create
        assert validate(
            server, token_for(server, "filekey", "a-secret-from-the-file-0123456789abcdef", "r")
        ).status == 401
    finally:
        server.stop()


def test_limits_and_room_states_answer_validate(tmp_path: Path) -> None:
    body = "limit:\n  max_room_name_length: 12\n  max_participant_identity_length: 8\n"
    server = Server(tmp_path / "limits.log", ["--config-body", body]).start()
    try:
        assert validate(server, server.token("ok", "short-room")).status == 200
        long_room = validate(server, server.token("ok", "a-room-name-too-long"))
        assert long_room.status == 400 and b"max_room_name_length" in long_room.body, long_room
        long_identity = validate(server, server.token("somebody-long", "short-room"))
        assert long_identity.status == 400 and b"identity" in long_identity.body, long_identity
    finally:
        server.stop()


async def test_a_config_file_from_the_environment_with_a_port_range_and_found_addresses(
    tmp_path: Path,
) -> None:
    """Not dev mode, no --udp-port, no --node-ip: the file LIVEKIT_CONFIG_FILE names gives
    the keys and `rtc.port_range_start/end`; media goes to ports in that range at the
    address the server found on its interface (the test network's veth), over UDP."""
    first = free_udp_range(10)
    config = tmp_path / "livekit.yaml"
    config.write_text(
        f"keys:\n  {KEY}: {SECRET}\n"
        f"rtc:\n  port_range_start: {first}\n  port_range_end: {first + 9}\n"
    )
    server = Server(tmp_path / "config-file.log")
    server.dev = False
    server.udp_port = None
    server.node_ip = None
    server.env = {"LIVEKIT_CONFIG_FILE": str(config)}
    server.api_key, server.api_secret = KEY, SECRET
    server.start()
    try:
        room = unique("config-file")
        async with Clients(server) as clients:
            alice = await clients.join(room, "alice")
            bob = await clients.join(room, "bob")
            sender, publication = await publish_tone(alice)
            probe = None
            try:
                subscribed = await wait_track_subscribed(bob, publication.sid)
                probe = AudioProbe(subscribed.args[0], "bob")
                await probe.wait_for_tone(TONE_HZ, min_seconds=TONE_SECONDS, what="alice's tone")
                for client, side in ((alice, "publisher"), (bob, "subscriber")):
                    remotes = await client.selected_remotes()
                    assert side in remotes, f"{client.label}: no selected pair on {side}: {remotes}"
                    address, port = remotes[side]
                    assert address == NODE_IP, f"{client.label} {side}: server at {address}"
                    assert first <= port <= first + 9, (
                        f"{client.label} {side}: server port {port} outside "
                        f"rtc.port_range {first}-{first + 9}"
                    )
                sender.check()
            finally:
                if probe is not None:
                    await probe.close()
                await sender.stop()
    finally:
        server.stop()
