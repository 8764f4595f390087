"""`aviary serve` configured as livekit-server is: config file or body, keys from flags,
the environment or a key file, and a clear one-line refusal (exit status 2) for a config
it cannot use. Checked from outside the process, as a user starts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness import Server, make_token, server_binary, unique, validate

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
