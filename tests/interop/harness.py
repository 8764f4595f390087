"""Helpers shared by the interop tests: the server process, tokens, SDK clients
and bounded waits.

Everything that waits here has an upper bound; nothing waits forever.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, Union

import jwt
import numpy as np
from livekit import api, rtc

REPO_ROOT = Path(__file__).resolve().parents[2]

# The address the server advertises and the clients dial. It lives on a veth
# inside the test network namespace (scripts/testnet.sh).
NODE_IP = "127.0.0.2"

API_KEY = "devkey"
API_SECRET = "secret"

# Upper bounds, in seconds.
STARTUP_TIMEOUT = float(os.environ.get("AVIARY_STARTUP_TIMEOUT", "30"))
STOP_TIMEOUT = 10.0
CONNECT_TIMEOUT = 30.0
FAILED_CONNECT_TIMEOUT = 60.0
EVENT_TIMEOUT = 10.0
ROOM_CLOSE_TIMEOUT = 20.0
HTTP_TIMEOUT = 10.0
DISCONNECT_TIMEOUT = 10.0
TEST_TIMEOUT = float(os.environ.get("AVIARY_TEST_TIMEOUT", "180"))


def server_binary() -> Path:
    return Path(os.environ.get("AVIARY_BIN") or REPO_ROOT / "target" / "debug" / "aviary")


def unique(prefix: str) -> str:
    """A room or identity name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------
# the server process

_handed_out_ports: set[tuple[int, int]] = set()

# Ports for the servers the tests start, outside the ephemeral range: scripts/testnet.sh
# narrows the namespace's `net.ipv4.ip_local_port_range` to end below them, so a port
# handed out here cannot be taken by a client's socket (libwebrtc binds ephemeral ports
# all through a test) between being chosen and the server binding it.
RESERVED_PORTS = range(50000, 61000)
_next_port = RESERVED_PORTS.start + random.Random(os.getpid()).randrange(len(RESERVED_PORTS))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port in RESERVED_PORTS nothing listens on right now (TCP or UDP), never the same
    twice."""
    global _next_port
    for _ in range(len(RESERVED_PORTS)):
        port = _next_port
        _next_port = RESERVED_PORTS.start + (port + 1 - RESERVED_PORTS.start) % len(RESERVED_PORTS)
        if (kind, port) in _handed_out_ports:
            continue
        try:
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("0.0.0.0", port))
        except OSError:
            continue
        _handed_out_ports.add((kind, port))
        return port
    raise RuntimeError(f"no free port in {RESERVED_PORTS}")


# The server binds one UDP port per worker thread: --udp-port, --udp-port + 1, ...
UDP_PORTS_PER_SERVER = max(2, os.cpu_count() or 1)


def free_udp_range(count: int = UDP_PORTS_PER_SERVER) -> int:
    """The first of `count` consecutive UDP ports that are all free and never handed out."""
    for _ in range(200):
        first = free_port(socket.SOCK_DGRAM)
        ports = range(first, first + count)
        if first + count > 65535 or any((socket.SOCK_DGRAM, p) in _handed_out_ports for p in ports[1:]):
            continue
        try:
            for p in ports[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("0.0.0.0", p))
        except OSError:
            continue
        _handed_out_ports.update((socket.SOCK_DGRAM, p) for p in ports)
        return first
    raise RuntimeError("could not find a free UDP port range")


# Every server started in this process, so that a test's teardown can read what each
# logged during the test (conftest.py fails a test whose servers panicked).
STARTED_SERVERS: list["Server"] = []

# What Rust's panic hook prints. A caught panic (a room's router, a connection task) keeps
# the process alive and the SDKs recover from it silently, so only the log shows it.
PANIC_MARK = re.compile(r"panicked at ")


class Server:
    """One `aviary serve --dev` process on free ports."""

    def __init__(self, log_path: Path, extra_args: Optional[list[str]] = None) -> None:
        self.binary = server_binary()
        self.port = free_port(socket.SOCK_STREAM)
        # None: from the configuration (`rtc.port_range_start`).
        self.udp_port: Optional[int] = free_udp_range()
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.extra_args = list(extra_args or [])
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None
        self.api_key = API_KEY
        self.api_secret = API_SECRET
        # Without --dev the keys must come from the config, flags or environment.
        self.dev = True
        # As a newcomer runs it: `--dev` with only ports given, so HTTP on loopback
        # and the advertised addresses the server's own choice.
        self.as_newcomer = False
        self.env: dict[str, str] = {}
        # Where HTTP and media bind, and the address put in ICE candidates: a shaped test
        # binds NODE_IP and advertises the shaper's address in front of it.
        self.bind_ip = "0.0.0.0"
        # None: the server finds its addresses itself.
        self.node_ip: Optional[str] = NODE_IP

    # -- addresses
    @property
    def host(self) -> str:
        return "127.0.0.1" if self.as_newcomer else NODE_IP

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            "serve",
            *(["--dev"] if self.dev else []),
            *([] if self.as_newcomer else ["--bind", self.bind_ip]),
            *([] if self.as_newcomer or self.node_ip is None else ["--node-ip", self.node_ip]),
            "--port",
            str(self.port),
            *([] if self.udp_port is None else ["--udp-port", str(self.udp_port)]),
            "--tcp-port",
            str(self.tcp_port),
            *self.extra_args,
        ]

    # -- lifecycle
    def start(self) -> "Server":
        if not self.binary.is_file():
            raise RuntimeError(
                f"server binary not found at {self.binary}: run `cargo build` in "
                f"{REPO_ROOT} or set AVIARY_BIN"
            )
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        STARTED_SERVERS.append(self)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last_error: Any = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"server exited with status {self.proc.returncode} during startup\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(self.http_url + "/", timeout=1) as resp:
                    if resp.status == 200:
                        return
                    last_error = f"HTTP {resp.status}"
            except (urllib.error.URLError, OSError) as e:
                last_error = e
            time.sleep(0.1)
        raise RuntimeError(
            f"server did not answer GET / within {STARTUP_TIMEOUT}s "
            f"(last error: {last_error})\n" + self.log_tail()
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """End the process this object started, by its pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
        except ProcessLookupError:
            pass

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        """What the server logged after byte `offset`."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def panics_since(self, offset: int) -> list[str]:
        """The panic reports in the log after byte `offset`, each with the lines after it."""
        lines = self.log_since(offset).splitlines()
        return [
            "\n".join(lines[i : i + 4]) for i, line in enumerate(lines) if PANIC_MARK.search(line)
        ]

    def log_tail(self, lines: int = 150) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no server log: {e})"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    # -- tokens and clients
    def token(self, identity: str, room: str, **kwargs: Any) -> str:
        return make_token(identity, room, api_key=self.api_key, api_secret=self.api_secret, **kwargs)

    def api(self) -> api.LiveKitAPI:
        """A RoomService client (protobuf). Create it inside a running loop and
        close it (`async with server.api() as lk:`)."""
        return api.LiveKitAPI(
            url=self.http_url,
            api_key=self.api_key,
            api_secret=self.api_secret,
            failover=False,
        )


# --------------------------------------------------------------------------
# tokens


def make_token(
    identity: str,
    room: str,
    *,
    name: Optional[str] = None,
    metadata: Optional[str] = None,
    attributes: Optional[dict[str, str]] = None,
    can_update_own_metadata: Optional[bool] = None,
    api_key: str = API_KEY,
    api_secret: str = API_SECRET,
) -> str:
    """A good join token made by the SDK's own AccessToken."""
    tok = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room=room,
                can_update_own_metadata=can_update_own_metadata,
            )
        )
    )
    if name is not None:
        tok = tok.with_name(name)
    if metadata is not None:
        tok = tok.with_metadata(metadata)
    if attributes is not None:
        tok = tok.with_attributes(attributes)
    return tok.to_jwt()


def service_token(api_key: str = API_KEY, api_secret: str = API_SECRET, **video: Any) -> str:
    """A token for the RoomService with the given video grants, in the JWT's
    own camelCase spelling (roomCreate=True, roomAdmin=True, room="x", ...)."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": api_key, "nbf": now - 5, "exp": now + 600, "sub": ""}
    if video:
        claims["video"] = video
    return jwt.encode(claims, api_secret, algorithm="HS256")


def hand_made_jwt(claims: dict[str, Any], secret: str = API_SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def join_claims(identity: str, room: str, *, api_key: str = API_KEY) -> dict[str, Any]:
    """The claims of a good join token, for the broken-token cases to spoil."""
    now = int(time.time())
    return {
        "iss": api_key,
        "sub": identity,
        "nbf": now - 5,
        "exp": now + 3600,
        "name": identity,
        "video": {"roomJoin": True, "room": room},
    }


# --------------------------------------------------------------------------
# raw HTTP


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    *,
    method: str = "GET",
    body: Optional[bytes] = None,
    headers: Optional[dict[str, str]] = None,
) -> HttpAnswer:
    """One plain HTTP request; any status (including 4xx/5xx) is returned."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return HttpAnswer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as e:
        return HttpAnswer(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


# How a client hands over its token: the python SDK (its Rust core) sends
# "Authorization: Bearer <token>"; the JS SDK and older clients put it in the
# query as access_token. The server must take both.
TOKEN_TRANSPORTS = ("header", "query")

# The query the python SDK 1.2.1 sends with /rtc and /rtc/validate.
SDK_QUERY = {
    "sdk": "python",
    "protocol": "18",
    "client_protocol": "2",
    "auto_subscribe": "1",
    "adaptive_stream": "0",
    "version": "1.2.1",
}


def _with_token(token: Optional[str], via: str) -> tuple[str, dict[str, str]]:
    """The query string and headers that carry `token` the `via` way."""
    query = dict(SDK_QUERY)
    headers: dict[str, str] = {}
    if token is not None:
        if via == "query":
            query["access_token"] = token
        elif via == "header":
            headers["Authorization"] = f"Bearer {token}"
        else:
            raise ValueError(f"unknown token transport {via!r}")
    return urllib.parse.urlencode(query), headers


def validate(server: Server, token: Optional[str], via: str = "query") -> HttpAnswer:
    q, headers = _with_token(token, via)
    return http_request(f"{server.http_url}/rtc/validate?{q}", headers=headers)


def websocket_upgrade(
    server: Server, token: Optional[str], path: str = "/rtc", via: str = "query"
) -> tuple[int, str]:
    """Send the opening handshake of a WebSocket as the SDKs do and return the
    HTTP status and the head of the answer. The socket is closed right after
    the answer's headers."""
    q, headers = _with_token(token, via)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"GET {path}?{q} HTTP/1.1\r\n"
        f"Host: {NODE_IP}:{server.port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"{extra}"
        "\r\n"
    )
    with socket.create_connection((NODE_IP, server.port), timeout=HTTP_TIMEOUT) as s:
        s.sendall(request.encode())
        data = b""
        deadline = time.monotonic() + HTTP_TIMEOUT
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status_line = head.split("\r\n", 1)[0]
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise AssertionError(f"no HTTP answer to the WebSocket handshake: {data[:200]!r}")
    return int(parts[1]), head


def twirp_json(
    server: Server,
    method: str,
    body: Any,
    token: Optional[str],
    *,
    service: str = "livekit.RoomService",
) -> HttpAnswer:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http_request(
        f"{server.http_url}/twirp/{service}/{method}",
        method="POST",
        body=json.dumps(body).encode(),
        headers=headers,
    )


# --------------------------------------------------------------------------
# bounded waiting


async def wait_until(
    predicate: Callable[[], Union[Any, Awaitable[Any]]],
    *,
    timeout: float = EVENT_TIMEOUT,
    what: str = "a condition",
    interval: float = 0.05,
) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy, and
    return that; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def room_names(lk: api.LiveKitAPI, names: Optional[list[str]] = None) -> list[str]:
    resp = await lk.room.list_rooms(api.ListRoomsRequest(names=names or []))
    return [r.name for r in resp.rooms]


async def participant_identities(lk: api.LiveKitAPI, room: str) -> list[str]:
    resp = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    return sorted(p.identity for p in resp.participants)


# --------------------------------------------------------------------------
# SDK clients

RECORDED_EVENTS = (
    "participant_connected",
    "participant_disconnected",
    "room_metadata_changed",
    "participant_metadata_changed",
    "participant_name_changed",
    "participant_attributes_changed",
    "participant_permissions_changed",
    "connection_state_changed",
    "disconnected",
    # media and data (test_media.py)
    "local_track_published",
    "local_track_unpublished",
    "track_published",
    "track_unpublished",
    "track_subscribed",
    "track_unsubscribed",
    "track_subscription_failed",
    "track_muted",
    "track_unmuted",
    "data_received",
    "active_speakers_changed",
    # resume and full reconnect (test_resume.py)
    "reconnecting",
    "reconnected",
    # congestion control and connection quality (test_congestion.py)
    "connection_quality_changed",
)


@dataclass
class Snapshot:
    """What a participant object looked like when an event was emitted (the
    SDK's objects change afterwards)."""

    identity: str
    sid: str
    name: str
    metadata: str
    attributes: dict[str, str]


def _snapshot(p: rtc.Participant) -> Snapshot:
    return Snapshot(p.identity, p.sid, p.name, p.metadata, dict(p.attributes))


@dataclass
class Event:
    name: str
    args: tuple
    # one Snapshot per participant argument, in order
    participants: list[Snapshot] = field(default_factory=list)

    @property
    def participant(self) -> Optional[Snapshot]:
        return self.participants[0] if self.participants else None


class Client:
    """An rtc.Room that records the events it emits from before it connects."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.room = rtc.Room()
        self.events: list[Event] = []
        # Event names the test looked at: a reconnect or a disconnect the test did not
        # look for is the SDK hiding a server fault, and fails the test (Clients.check).
        self.looked_at: set[str] = set()
        # The ICE transport its peer connections must have selected ("udp" unless the
        # test forces ICE/TCP).
        self.transport = "udp"
        for name in RECORDED_EVENTS:
            self.room.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            snaps = [_snapshot(a) for a in args if isinstance(a, rtc.Participant)]
            self.events.append(Event(name, args, snaps))

        return record

    async def connect(
        self,
        url: str,
        token: str,
        timeout: float = CONNECT_TIMEOUT,
        options: Optional[rtc.RoomOptions] = None,
    ) -> None:
        await asyncio.wait_for(self.room.connect(url, token, options or rtc.RoomOptions()), timeout)

    def seen(self, name: str, where: Optional[Callable[[Event], bool]] = None) -> list[Event]:
        self.looked_at.add(name)
        return [e for e in self.events if e.name == name and (where is None or where(e))]

    def expect(self, *names: str) -> None:
        """Says the test causes these events (a reconnect, a disconnect) on purpose."""
        self.looked_at.update(names)

    def unasked_interruptions(self) -> list[str]:
        """Connection changes the test neither caused (by disconnecting) nor looked at."""
        found = []
        reconnect_ok = self.looked_at & {"reconnecting", "reconnected", "connection_state_changed"}
        disconnect_ok = self.looked_at & {"disconnected", "connection_state_changed"}
        for e in self.events:
            if e.name in ("reconnecting", "reconnected") and not reconnect_ok:
                found.append(e.name)
            elif e.name == "disconnected" and not disconnect_ok:
                # the test's own room.disconnect() is asked for
                if e.args and e.args[0] == rtc.DisconnectReason.CLIENT_INITIATED:
                    continue
                found.append(f"disconnected {e.args}")
        return found

    async def wait_event(
        self,
        name: str,
        where: Optional[Callable[[Event], bool]] = None,
        *,
        timeout: float = EVENT_TIMEOUT,
        what: Optional[str] = None,
    ) -> Event:
        found = await wait_until(
            lambda: self.seen(name, where),
            timeout=timeout,
            what=what or f"{self.label} to see {name}",
        )
        return found[0]

    @property
    def disconnect_reasons(self) -> list[Any]:
        return [e.args[0] if e.args else None for e in self.seen("disconnected")]

    async def _per_connection(self, read: Callable[[list[Any]], Any]) -> dict[str, Any]:
        """`read` of each of the client's peer connections' stats reports, by
        "publisher"/"subscriber", for those where it is not None."""
        stats = await self.room.get_rtc_stats()
        return {
            side: value
            for side, reports in (
                ("publisher", stats.publisher_stats),
                ("subscriber", stats.subscriber_stats),
            )
            if (value := read(reports)) is not None
        }

    async def selected_transports(self) -> dict[str, str]:
        """The protocol ("udp"/"tcp") of the candidate pair each of the client's peer
        connections selected, by "publisher"/"subscriber" (those with one)."""
        return await self._per_connection(selected_protocol)

    async def data_messages_sent(self, label: str = "_reliable") -> int:
        """Messages the client's publisher connection has sent on the data channel
        `label` (the SDK's "_reliable" or "_lossy"), from its own stats: what left the
        client, whatever the server did with it."""
        stats = await self.room.get_rtc_stats()
        return sum(
            r.data_channel.dc.messages_sent
            for r in stats.publisher_stats
            if r.WhichOneof("stats") == "data_channel" and r.data_channel.dc.label == label
        )

    async def selected_remotes(self) -> dict[str, tuple[str, int]]:
        """The server's (address, port) in the candidate pair each of the client's peer
        connections selected, by "publisher"/"subscriber" (those with one)."""
        return await self._per_connection(selected_remote)

    async def disconnect(self) -> None:
        self.expect("disconnected")
        try:
            await asyncio.wait_for(self.room.disconnect(), DISCONNECT_TIMEOUT)
        except Exception:
            pass


def _selected_pairs(reports: list[Any]) -> list[Any]:
    """The candidate pair(s) a peer connection selected, from its stats reports."""
    pairs = {}
    selected_ids = []
    for r in reports:
        kind = r.WhichOneof("stats")
        if kind == "candidate_pair":
            pairs[r.candidate_pair.rtc.id] = r.candidate_pair.candidate_pair
        elif kind == "transport" and r.transport.transport.selected_candidate_pair_id:
            selected_ids.append(r.transport.transport.selected_candidate_pair_id)
    if not selected_ids:
        # no transport report names it: the nominated pair that succeeded
        selected_ids = [
            pid
            for pid, p in pairs.items()
            if p.nominated and p.state == rtc.stats.IceCandidatePairState.PAIR_SUCCEEDED
        ]
    return [pairs[pid] for pid in selected_ids if pid in pairs]


def selected_remote(reports: list[Any]) -> Optional[tuple[str, int]]:
    """The remote candidate's (address, port) in a peer connection's selected pair, from
    its stats reports; None when it has no selected pair."""
    remote = {
        r.remote_candidate.rtc.id: (r.remote_candidate.candidate.address, r.remote_candidate.candidate.port)
        for r in reports
        if r.WhichOneof("stats") == "remote_candidate"
    }
    found = {remote[p.remote_candidate_id] for p in _selected_pairs(reports) if p.remote_candidate_id in remote}
    if not found:
        return None
    assert len(found) == 1, f"several selected pairs on one connection: {found}"
    return found.pop()


def selected_protocol(reports: list[Any]) -> Optional[str]:
    """The protocol of the local candidate in a peer connection's selected pair, from its
    stats reports; None when it has no selected pair (not connected)."""
    local = {
        r.local_candidate.rtc.id: r.local_candidate.candidate.protocol
        for r in reports
        if r.WhichOneof("stats") == "local_candidate"
    }
    protocols = {local.get(p.local_candidate_id) for p in _selected_pairs(reports)}
    protocols.discard(None)
    if not protocols:
        return None
    assert len(protocols) == 1, f"several selected pairs on one connection: {protocols}"
    return protocols.pop()


class Clients:
    """Makes clients and disconnects every one of them at the end:

        async with Clients(server) as clients:
            alice = await clients.join(room, "alice", name="Alice")
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._all: list[Client] = []

    async def __aenter__(self) -> "Clients":
        return self

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            if exc_type is None:
                await self.check()
        finally:
            await self.close()

    async def check(self) -> None:
        """Fails on what the SDK would hide: a connection that left CONNECTED without the
        test asking, or a peer connection on another transport than the test's."""
        problems = []
        for c in self._all:
            unasked = c.unasked_interruptions()
            if unasked:
                problems.append(f"{c.label}: connection interrupted unasked: {unasked}")
            if c.room.isconnected():
                try:
                    selected = await asyncio.wait_for(c.selected_transports(), HTTP_TIMEOUT)
                except Exception as e:  # a client the test left mid-reconnect
                    problems.append(f"{c.label}: no transport stats: {e!r}")
                    continue
                wrong = {side: p for side, p in selected.items() if p != c.transport}
                if wrong:
                    problems.append(
                        f"{c.label}: selected candidate pairs {selected}, expected {c.transport} "
                        "(libwebrtc falls back to ICE/TCP when UDP fails)"
                    )
        assert not problems, "\n".join(problems)

    async def close(self) -> None:
        await asyncio.gather(*(c.disconnect() for c in self._all), return_exceptions=True)

    def new(self, label: str) -> Client:
        c = Client(label)
        self._all.append(c)
        return c

    async def join(self, room: str, identity: str, **token_kwargs: Any) -> Client:
        client = self.new(identity)
        await client.connect(self.server.ws_url, self.server.token(identity, room, **token_kwargs))
        return client

    async def meet(self, room: str, *identities: str) -> list[Client]:
        """Joins each identity in turn; returns once the last has seen the others."""
        clients = [await self.join(room, i) for i in identities]
        await wait_until(
            lambda: set(identities[:-1]) <= set(clients[-1].room.remote_participants),
            what=f"{identities[-1]} to see {identities[:-1]}",
        )
        return clients

    async def join_with_token(self, token: str, label: str = "client") -> Client:
        client = self.new(label)
        await client.connect(self.server.ws_url, token)
        return client

    async def expect_refused(self, token: str, label: str = "refused") -> BaseException:
        """Connect with `token`, expect the SDK's connect to fail (not to hang
        past the bound), and return the exception."""
        client = self.new(label)
        client.expect("disconnected")
        try:
            await asyncio.wait_for(
                self.room_connect(client, token), FAILED_CONNECT_TIMEOUT
            )
        except asyncio.TimeoutError:
            raise AssertionError(
                f"connect for {label} neither succeeded nor failed within "
                f"{FAILED_CONNECT_TIMEOUT}s"
            )
        except Exception as e:  # the SDK raises rtc.ConnectError
            assert not client.room.isconnected(), f"{label}: connect raised yet the room is connected"
            return e
        raise AssertionError(f"connect for {label} succeeded but should have been refused")

    async def room_connect(self, client: Client, token: str) -> None:
        await client.room.connect(self.server.ws_url, token)


# --------------------------------------------------------------------------
# media: what the publishers send and how the subscribers check it

# Audio: 48 kHz mono, 10 ms frames (what libwebrtc and Opus work in).
SAMPLE_RATE = 48000
FRAME_SAMPLES = SAMPLE_RATE // 100
# A frame whose RMS is below this (about -40 dBFS) counts as silent.
SILENCE_RMS = 300.0

# Upper bounds for media, in seconds.
PUBLISH_TIMEOUT = 15.0  # publish_track (the SDK itself gives up after 10 s)
SUBSCRIBE_TIMEOUT = 10.0  # from publishing (or joining) to track_subscribed
MEDIA_TIMEOUT = 10.0  # from track_subscribed to enough decoded media
MAX_SEND_SECONDS = 30.0  # no sender runs longer than this
STREAM_CLOSE_TIMEOUT = 5.0


class SineGenerator:
    """Consecutive 10 ms int16 frames of one continuous sine."""

    def __init__(self, frequency: float, amplitude: float = 0.5, rate: int = SAMPLE_RATE) -> None:
        self.frequency = frequency
        self.amplitude = amplitude
        self.rate = rate
        self.position = 0  # samples produced so far

    def samples(self, count: int = FRAME_SAMPLES) -> np.ndarray:
        n = np.arange(self.position, self.position + count)
        self.position += count
        wave = self.amplitude * 32767.0 * np.sin(2.0 * np.pi * self.frequency * n / self.rate)
        return np.round(wave).astype(np.int16)

    def frame(self) -> rtc.AudioFrame:
        data = self.samples(FRAME_SAMPLES)
        return rtc.AudioFrame(data.tobytes(), self.rate, 1, FRAME_SAMPLES)


def frame_samples(frame: rtc.AudioFrame) -> np.ndarray:
    """The samples of a (mono) AudioFrame as a float array of its own."""
    return np.frombuffer(frame.data, dtype=np.int16).astype(np.float64)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples)))) if len(samples) else 0.0


def dominant_frequency(samples: np.ndarray, rate: int = SAMPLE_RATE) -> tuple[float, float]:
    """The strongest frequency in `samples` (Hann window, FFT, parabolic
    interpolation around the peak bin) and the share of the spectrum's energy
    within 20 Hz of it (1.0 for a pure tone, small for noise)."""
    if len(samples) < 64:
        return 0.0, 0.0
    x = samples - np.mean(samples)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    power = np.square(spectrum)
    bin_hz = rate / len(x)
    power[: int(20.0 / bin_hz) + 1] = 0.0  # nothing below 20 Hz
    total = float(np.sum(power))
    if total <= 0.0:
        return 0.0, 0.0
    k = int(np.argmax(power))
    offset = 0.0
    if 0 < k < len(spectrum) - 1:
        a, b, c = (
            np.log(spectrum[k - 1] + 1e-12),
            np.log(spectrum[k] + 1e-12),
            np.log(spectrum[k + 1] + 1e-12),
        )
        denominator = a - 2.0 * b + c
        if denominator != 0.0:
            offset = 0.5 * (a - c) / denominator
    peak_hz = (k + offset) * bin_hz
    near = int(round(20.0 / bin_hz))
    share = float(np.sum(power[max(k - near, 0) : k + near + 1])) / total
    return float(peak_hz), share


@dataclass
class ToneReport:
    """What a stretch of received audio sounds like."""

    frames: int  # frames received
    seconds: float  # audio received
    loud_seconds: float  # of which not silent
    analysed_seconds: float  # from the first loud frame on
    rms: float  # of the analysed part
    frequency: float  # its dominant frequency
    tone_share: float  # share of its energy within 20 Hz of that

    def has_tone(self, frequency: float, *, min_seconds: float, tolerance: float = 10.0) -> bool:
        return (
            self.loud_seconds >= min_seconds
            and abs(self.frequency - frequency) <= tolerance
            and self.tone_share >= 0.5
        )

    def describe(self) -> str:
        if not self.frames:
            return "no audio frames at all"
        return (
            f"{self.frames} frames ({self.seconds:.2f}s), {self.loud_seconds:.2f}s not silent; "
            f"analysed {self.analysed_seconds:.2f}s from the first loud frame: RMS {self.rms:.0f}, "
            f"dominant {self.frequency:.1f} Hz holding {self.tone_share:.0%} of the energy"
        )


def analyse_tone(frames: list[np.ndarray], rate: int = SAMPLE_RATE) -> ToneReport:
    """Analyse consecutive received frames: leading silence (before the first
    packet arrived) is skipped; the FFT runs over the rest."""
    loud = [rms(f) > SILENCE_RMS for f in frames]
    seconds = sum(len(f) for f in frames) / rate
    loud_seconds = sum(len(f) for f, is_loud in zip(frames, loud) if is_loud) / rate
    if not any(loud):
        return ToneReport(len(frames), seconds, 0.0, 0.0, 0.0, 0.0, 0.0)
    first = loud.index(True)
    segment = np.concatenate(frames[first:])
    frequency, share = dominant_frequency(segment, rate)
    return ToneReport(
        len(frames), seconds, loud_seconds, len(segment) / rate, rms(segment), frequency, share
    )


class ToneSender:
    """A LocalAudioTrack fed with a sine through rtc.AudioSource in real time
    (48 kHz mono, 10 ms frames) from a background task, for at most
    MAX_SEND_SECONDS."""

    PREFILL = 0.1  # seconds of audio queued ahead

    def __init__(self, frequency: float = 440.0, *, name: str = "tone") -> None:
        self.frequency = frequency
        self.source = rtc.AudioSource(SAMPLE_RATE, 1)
        self.track = rtc.LocalAudioTrack.create_audio_track(name, self.source)
        self.generator = SineGenerator(frequency)
        self.frames_sent = 0
        self._task: Optional[asyncio.Task] = None

    def start(self, max_seconds: float = MAX_SEND_SECONDS) -> "ToneSender":
        self._task = asyncio.get_running_loop().create_task(self._run(max_seconds))
        return self

    async def _run(self, max_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        frame_seconds = FRAME_SAMPLES / SAMPLE_RATE
        while self.frames_sent * frame_seconds < max_seconds:
            delay = start + self.frames_sent * frame_seconds - self.PREFILL - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.source.capture_frame(self.generator.frame())
            self.frames_sent += 1

    def check(self) -> None:
        """Fail if the sender task died."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            exc = self._task.exception()
            if exc is not None:
                raise AssertionError(f"the tone sender failed: {exc!r}") from exc

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, STREAM_CLOSE_TIMEOUT)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
                pass
        try:
            await asyncio.wait_for(self.source.aclose(), STREAM_CLOSE_TIMEOUT)
        except Exception:
            pass


class SolidVideoSender:
    """A LocalVideoTrack fed with one solid colour (RGBA) through
    rtc.VideoSource at `fps` from a background task, for at most
    MAX_SEND_SECONDS."""

    def __init__(
        self,
        width: int,
        height: int,
        rgba: tuple[int, int, int, int],
        *,
        fps: float = 30.0,
        name: str = "solid",
    ) -> None:
        self.width, self.height, self.rgba, self.fps = width, height, rgba, fps
        self.source = rtc.VideoSource(width, height)
        self.track = rtc.LocalVideoTrack.create_video_track(name, self.source)
        self.frame = solid_frame(width, height, rgba)
        self.frames_sent = 0
        self._task: Optional[asyncio.Task] = None

    def start(self, max_seconds: float = MAX_SEND_SECONDS) -> "SolidVideoSender":
        self._task = asyncio.get_running_loop().create_task(self._run(max_seconds))
        return self

    async def _run(self, max_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while self.frames_sent / self.fps < max_seconds:
            delay = start + self.frames_sent / self.fps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.source.capture_frame(self.frame)
            self.frames_sent += 1

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, STREAM_CLOSE_TIMEOUT)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
                pass
        try:
            await asyncio.wait_for(self.source.aclose(), STREAM_CLOSE_TIMEOUT)
        except Exception:
            pass


def solid_frame(width: int, height: int, rgba: tuple[int, int, int, int]) -> rtc.VideoFrame:
    return rtc.VideoFrame(
        width, height, rtc.VideoBufferType.RGBA, bytearray(bytes(rgba) * (width * height))
    )


def centre_rgba(frame: rtc.VideoFrame) -> tuple[int, int, int, int]:
    """The centre pixel of a frame of any buffer type, converted to RGBA."""
    if frame.type != rtc.VideoBufferType.RGBA:
        frame = frame.convert(rtc.VideoBufferType.RGBA)
    x, y = frame.width // 2, frame.height // 2
    i = (y * frame.width + x) * 4
    px = bytes(frame.data[i : i + 4])
    return px[0], px[1], px[2], px[3]


def colour_close(got: tuple[int, ...], want: tuple[int, ...], tolerance: int) -> bool:
    """R, G and B each within `tolerance` (alpha is not compared)."""
    return all(abs(int(g) - int(w)) <= tolerance for g, w in zip(got[:3], want[:3]))


class AudioProbe:
    """Reads an rtc.AudioStream of a remote audio track in a background task
    and keeps every frame with the time it arrived."""

    def __init__(self, track: rtc.Track, label: str = "audio") -> None:
        self.label = label
        self.track = track
        self.stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        self._loop = asyncio.get_running_loop()
        self.frames: list[tuple[float, np.ndarray]] = []
        self.ended = False
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.stream:
            self.frames.append((self._loop.time(), frame_samples(event.frame)))
        self.ended = True

    def since(self, t0: float, until: Optional[float] = None) -> list[np.ndarray]:
        return [f for t, f in self.frames if t >= t0 and (until is None or t <= until)]

    def report(self, t0: float = 0.0, until: Optional[float] = None) -> ToneReport:
        return analyse_tone(self.since(t0, until))

    async def wait_for_tone(
        self,
        frequency: float,
        *,
        min_seconds: float,
        since: float = 0.0,
        timeout: float = MEDIA_TIMEOUT,
        what: str = "the tone",
    ) -> ToneReport:
        """Wait until the audio received since `since` holds `min_seconds` of
        non-silent audio whose dominant frequency is `frequency` ± 10 Hz."""
        deadline = self._loop.time() + timeout
        while True:
            report = self.report(since)
            if report.has_tone(frequency, min_seconds=min_seconds):
                return report
            if self._loop.time() >= deadline or self._task.done():
                state = " (the audio stream ended)" if self._task.done() else ""
                raise AssertionError(
                    f"{self.label}: no {min_seconds}s of {frequency:.0f} Hz tone within {timeout}s "
                    f"for {what}{state}: {report.describe()}"
                )
            await asyncio.sleep(0.1)

    async def wait_for_silence(
        self,
        *,
        since: float,
        subscriber: "Client",
        control: "AudioProbe",
        frequency: float,
        window: float = 1.0,
        timeout: float = MEDIA_TIMEOUT,
        what: str = "silence",
    ) -> ToneReport:
        """Wait for a `window`-long stretch after `since` in which at most a tenth of the
        received audio is loud, while `subscriber` (whose stream this is) is still
        connected with its subscriber connection up (forwarding stopped, not the
        connection destroyed) and `control`, another subscriber of the same tone, still
        hears it in the same stretch (the publisher still sends)."""
        deadline = self._loop.time() + timeout
        while True:
            now = self._loop.time()
            if now - window >= since:
                report = self.report(now - window, now)
                heard = control.report(now - window, now)
                if report.loud_seconds <= 0.1 * window and heard.has_tone(
                    frequency, min_seconds=0.5 * window
                ):
                    assert subscriber.room.isconnected(), f"{subscriber.label} is disconnected"
                    transports = await subscriber.selected_transports()
                    assert "subscriber" in transports, (
                        f"{subscriber.label}'s subscriber connection is down ({transports}): "
                        f"the silence is a dead connection, not {what}"
                    )
                    return report
            if now >= deadline:
                raise AssertionError(
                    f"{self.label}: no silence while {control.label} hears {frequency} Hz "
                    f"within {timeout}s for {what}; the last {window}s: "
                    f"{self.label}: {self.report(now - window, now).describe()}; "
                    f"{control.label}: {control.report(now - window, now).describe()}"
                )
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.stream.aclose(), STREAM_CLOSE_TIMEOUT)
        except Exception:
            pass
        if not self._task.done():
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, STREAM_CLOSE_TIMEOUT)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
                pass


async def publish_track(
    client: "Client",
    track: rtc.LocalTrack,
    options: rtc.TrackPublishOptions,
    timeout: float = PUBLISH_TIMEOUT,
) -> rtc.LocalTrackPublication:
    """LocalParticipant.publish_track, bounded. The SDK sends AddTrackRequest
    and waits for the TrackPublishedResponse with the same cid."""
    try:
        return await asyncio.wait_for(
            client.room.local_participant.publish_track(track, options), timeout
        )
    except asyncio.TimeoutError:
        raise AssertionError(
            f"{client.label}: publish_track did not return within {timeout}s"
        ) from None


async def wait_track_subscribed(
    client: "Client", track_sid: str, *, timeout: float = SUBSCRIBE_TIMEOUT, since: int = 0
) -> Event:
    """The first track_subscribed event for `track_sid` (among the events
    recorded from index `since` on)."""
    found = await wait_until(
        lambda: [
            e
            for e in client.events[since:]
            if e.name == "track_subscribed" and e.args[1].sid == track_sid
        ],
        timeout=timeout,
        what=(
            f"{client.label} to get track {track_sid} (track_subscribed): the server has to "
            "offer it on the subscriber connection with msid '<participant sid>|<track sid>' "
            "and forward its RTP"
        ),
    )
    return found[0]


async def within(awaitable: Awaitable[Any], timeout: float, what: str) -> Any:
    """Await `awaitable` for at most `timeout` seconds; fail the test saying
    `what` did not finish otherwise."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what} did not finish within {timeout}s") from None


# --------------------------------------------------------------------------
# a TCP proxy that can cut connections (signaling over a network that breaks)


class TcpProxy:
    """Forwards TCP connections made to NODE_IP:<port> (or `listen`) to `target_port` on
    NODE_IP (or `target_host`), both ways; `cut()` resets every connection it carries at once, as
    a network path that drops them would (a Wi-Fi handover, a proxy recycling
    its connections). New connections are forwarded as before. Runs on the
    test's event loop."""

    def __init__(
        self, target_port: int, *, listen: tuple[str, int] = (NODE_IP, 0), target_host: str = NODE_IP
    ) -> None:
        self.target_port = target_port
        self.target_host = target_host
        self.listen = listen
        self.port = 0
        self.connections = 0  # accepted so far
        self.cuts = 0  # connections reset by cut()
        self._server: Optional[asyncio.base_events.Server] = None
        self._live: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def ws_url(self) -> str:
        return f"ws://{NODE_IP}:{self.port}"

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._handle, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), HTTP_TIMEOUT
            )
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        self._live.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                self._live.discard(dst)
                dst.close()

        for t in (pipe(reader, up_writer), pipe(up_reader, writer)):
            task = asyncio.get_running_loop().create_task(t)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def cut(self) -> int:
        """Reset every connection now (both sides get an RST); returns how many."""
        live = list(self._live)
        for w in live:
            w.transport.abort()
        self._live.clear()
        self.cuts += len(live) // 2
        return len(live) // 2

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --------------------------------------------------------------------------
# a webhook receiver


@dataclass
class Delivery:
    """One webhook request as it arrived."""

    body: str
    authorization: str
    content_type: str
    event: Any  # the WebhookEvent, verified by the SDK's WebhookReceiver


class WebhookSink:
    """An HTTP endpoint on NODE_IP that takes webhooks and checks each with
    the python server SDK's WebhookReceiver (signature and body hash). A
    request that fails the check is answered 401 and kept in `rejected`."""

    def __init__(self, api_key: str = API_KEY, api_secret: str = API_SECRET, port: int = 0) -> None:
        self.receiver = api.WebhookReceiver(api.TokenVerifier(api_key, api_secret))
        self.port = port or free_port(socket.SOCK_STREAM)
        self.deliveries: list[Delivery] = []
        self.rejected: list[tuple[str, str]] = []
        self._runner: Any = None

    @property
    def url(self) -> str:
        return f"http://{NODE_IP}:{self.port}/webhook"

    async def start(self) -> "WebhookSink":
        from aiohttp import web

        async def handle(request: "web.Request") -> "web.Response":
            body = await request.text()
            auth = request.headers.get("Authorization", "")
            try:
                event = self.receiver.receive(body, auth)
            except Exception as e:  # noqa: BLE001 - any failure is a rejection
                self.rejected.append((body, f"{type(e).__name__}: {e}"))
                return web.Response(status=401, text=str(e))
            self.deliveries.append(
                Delivery(body, auth, request.headers.get("Content-Type", ""), event)
            )
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/webhook", handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, NODE_IP, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def events(self, room: Optional[str] = None) -> list[str]:
        return [
            d.event.event
            for d in self.deliveries
            if room is None or d.event.room.name == room
        ]
