"""`aviary netem` in front of a test server: clients reach the server's media through
a userspace bottleneck (the machine has no `tc netem`).

The server binds its media to NODE_IP and advertises SHAPER_IP; one shaper per worker
port listens on SHAPER_IP and forwards to NODE_IP. SHAPER_IP is put on the test
namespace's veth (a non-loopback interface, so libwebrtc uses it) for the test's time.
The server's ICE/TCP candidate is advertised at SHAPER_IP too, where nothing listens:
a client cannot fall back to TCP around the shaper, so what a test sees crossed it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

from harness import NODE_IP, UDP_PORTS_PER_SERVER, Server, server_binary

SHAPER_IP = "127.0.0.3"
VETH = "avr0"  # scripts/testnet.sh: the namespace's veth end that holds NODE_IP
START_TIMEOUT = 5.0
REPLY_TIMEOUT = 5.0


class Shaper:
    """One `aviary netem` process per worker port of `server`."""

    def __init__(self, server: Server, log_path: Path, *args: str) -> None:
        self.server = server
        self.log_path = log_path
        self.args = list(args)
        self.procs: list[subprocess.Popen] = []

    def start(self) -> "Shaper":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for i in range(UDP_PORTS_PER_SERVER):
            port = self.server.udp_port + i
            argv = [
                str(server_binary()),
                "netem",
                "--listen",
                f"{SHAPER_IP}:{port}",
                "--forward",
                f"{NODE_IP}:{port}",
                "--seed",
                str(1 + i),
                *self.args,
            ]
            log = open(self.log_path.with_suffix(f".{i}.log"), "ab")
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1
            )
            self.procs.append(proc)
            self._expect(proc, "netem listening", START_TIMEOUT)
        return self

    def _expect(self, proc: subprocess.Popen, prefix: str, timeout: float) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"aviary netem exited with {proc.returncode}; see {self.log_path}")
            line = proc.stdout.readline()
            if line.startswith(prefix):
                return line
        raise RuntimeError(f"aviary netem did not say {prefix!r} within {timeout} s")

    def set(self, line: str) -> None:
        """Changes a setting on every shaper (`rate 0`, `loss 5%`, ...)."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            reply = self._expect(proc, "", REPLY_TIMEOUT).strip()
            if reply != "ok":
                raise RuntimeError(f"aviary netem refused {line!r}: {reply}")

    def stats(self) -> dict[str, int]:
        """What every shaper did so far, summed: passed, lost, overflowed, reordered."""
        totals: dict[str, int] = {}
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            reply = self._expect(proc, "", REPLY_TIMEOUT).split()
            if reply[:1] != ["ok"]:
                raise RuntimeError(f"aviary netem answered `stats` with {' '.join(reply)!r}")
            for field in reply[1:]:
                key, _, value = field.partition("=")
                totals[key] = totals.get(key, 0) + int(value)
        return totals

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.procs.clear()


@contextlib.contextmanager
def shaper_address() -> Iterator[None]:
    """SHAPER_IP on the namespace's veth for the block's time."""
    added = subprocess.run(
        ["ip", "addr", "add", f"{SHAPER_IP}/32", "dev", VETH], capture_output=True, text=True
    )
    if added.returncode != 0 and "File exists" not in added.stderr:
        raise RuntimeError(f"cannot put {SHAPER_IP} on {VETH}: {added.stderr.strip()}")
    try:
        yield
    finally:
        if added.returncode == 0:
            subprocess.run(["ip", "addr", "del", f"{SHAPER_IP}/32", "dev", VETH], capture_output=True)


@contextlib.contextmanager
def server_behind_shaper_address(log_path: Path, extra_args: Optional[list[str]] = None) -> Iterator[Server]:
    """A server that binds NODE_IP and advertises SHAPER_IP, where nothing listens yet."""
    with shaper_address():
        server = Server(log_path, extra_args)
        server.bind_ip = NODE_IP
        server.node_ip = SHAPER_IP
        try:
            yield server.start()
        finally:
            server.stop()


@contextlib.contextmanager
def shaped_server(tmp_path: Path, *shaper_args: str) -> Iterator[tuple[Server, Shaper]]:
    """A server whose clients' media crosses `aviary netem <shaper_args>`."""
    with server_behind_shaper_address(tmp_path / "server.log") as server:
        shaper = Shaper(server, tmp_path / "netem", *shaper_args).start()
        try:
            yield server, shaper
        finally:
            shaper.stop()


def in_namespace() -> bool:
    """The interop tests run inside scripts/testnet.sh's namespace, where VETH exists."""
    return os.path.exists(f"/sys/class/net/{VETH}")
