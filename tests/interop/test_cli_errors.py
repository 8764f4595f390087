"""What the CLI says when it cannot do its job: the failing step, the server's
or the system's reason, what to do, each said once; and a non-zero exit. A
wrong secret and a server that is not there, for every client command
(room, join, load-test), and a URL without its scheme."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time

import pytest

from harness import Server, free_port, server_binary, unique

CLI_TIMEOUT = 60
# A command that cannot connect says so within this (the load test used to wait ~50 s).
FAIL_FAST = 15.0


def run(*argv: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_") and k != "RUST_LOG"}
    t = time.monotonic()
    out = subprocess.run(
        [str(server_binary()), *argv], capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env
    )
    return out, time.monotonic() - t


def the_error(out: subprocess.CompletedProcess) -> str:
    """The one `aviary: ...` line on stderr; every segment of it said once."""
    lines = [line for line in out.stderr.splitlines() if line.startswith("aviary: ")]
    assert len(lines) == 1, f"want one `aviary: ...` line on stderr, got:\n{out.stderr}"
    line = lines[0]
    parts = [p.strip() for p in re.split(r"[:;]\s", line[len("aviary: "):])]
    repeated = {p for p in parts if p and parts.count(p) > 1}
    assert not repeated, f"said more than once: {repeated} in {line!r}"
    return line


def nothing_listening() -> str:
    port = free_port(socket.SOCK_STREAM)
    return f"ws://127.0.0.1:{port}"


def client_argv(command: str, url: str, secret: str) -> list[str]:
    common = ["--url", url, "--api-key", "devkey", "--api-secret", secret]
    room = unique("err")
    return {
        "room": ["room", "list", *common],
        "join": ["join", *common, "--room", room, "--identity", "e", "--duration", "5s"],
        "load-test": ["load-test", *common, "--room", room, "--subscribers", "2", "--duration", "3s"],
    }[command]


@pytest.mark.parametrize("command", ["room", "join", "load-test"])
def test_a_wrong_secret_is_refused_with_the_servers_reason(server: Server, command: str) -> None:
    out, took = run(*client_argv(command, server.ws_url, "not-the-secret"))
    assert out.returncode != 0, f"exit status 0 for a refused {command}:\n{out.stdout}\n{out.stderr}"
    line = the_error(out)
    # the server's own reason, and what to check
    assert "invalid access token signature" in line, line
    assert "api-key" in line.lower() or "api key" in line.lower(), line
    assert took < FAIL_FAST, f"{command} took {took:.1f}s to give up"


@pytest.mark.parametrize("command", ["room", "join", "load-test"])
def test_no_server_says_where_it_looked(command: str) -> None:
    url = nothing_listening()
    out, took = run(*client_argv(command, url, "secret"))
    assert out.returncode != 0
    line = the_error(out)
    port = url.rsplit(":", 1)[1]
    assert line.count(port) == 1, f"the URL once: {line}"
    assert "Connection refused" in line and "running" in line, line
    assert took < FAIL_FAST, f"{command} took {took:.1f}s to give up"


@pytest.mark.parametrize("command", ["room", "join"])
def test_a_url_without_its_scheme_says_what_to_write(command: str) -> None:
    out, _ = run(*client_argv(command, "127.0.0.1:7880", "secret"))
    assert out.returncode != 0
    line = the_error(out)
    assert "ws://127.0.0.1:7880" in line and "http://127.0.0.1:7880" in line, line


def test_a_port_in_use_names_it_once_with_the_flag_to_change_it(server: Server) -> None:
    out, _ = run("serve", "--dev", "--port", str(server.port), "--udp-port", "0", "--tcp-port", "0")
    assert out.returncode != 0
    line = the_error(out)
    assert line.count(str(server.port)) == 1 and "--port" in line, line


def test_token_create_asks_only_for_what_the_grant_needs() -> None:
    out, _ = run("token", "create", "--list")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().count(".") == 2
    out, _ = run("token", "create", "--identity", "x")
    assert out.returncode == 2 and "--room" in out.stderr, out.stderr
    help_text, _ = run("token", "create", "--help")
    assert "--url" not in help_text.stdout, "token create does not connect anywhere"
