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


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on right now (TCP or UDP), never the same twice."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        if (kind, port) not in _handed_out_ports:
            _handed_out_ports.add((kind, port))
            return port
    raise RuntimeError("could not find a free port")


class Server:
    """One `aviary serve --dev` process on free ports."""

    def __init__(self, log_path: Path, extra_args: Optional[list[str]] = None) -> None:
        self.binary = server_binary()
        self.port = free_port(socket.SOCK_STREAM)
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.extra_args = list(extra_args or [])
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None
        self.api_key = API_KEY
        self.api_secret = API_SECRET

    # -- addresses
    @property
    def ws_url(self) -> str:
        return f"ws://{NODE_IP}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{NODE_IP}:{self.port}"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            "serve",
            "--dev",
            "--bind",
            "0.0.0.0",
            "--node-ip",
            NODE_IP,
            "--port",
            str(self.port),
            "--udp-port",
            str(self.udp_port),
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
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
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
        for name in RECORDED_EVENTS:
            self.room.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            snaps = [_snapshot(a) for a in args if isinstance(a, rtc.Participant)]
            self.events.append(Event(name, args, snaps))

        return record

    async def connect(self, url: str, token: str, timeout: float = CONNECT_TIMEOUT) -> None:
        await asyncio.wait_for(self.room.connect(url, token), timeout)

    def seen(self, name: str, where: Optional[Callable[[Event], bool]] = None) -> list[Event]:
        return [e for e in self.events if e.name == name and (where is None or where(e))]

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

    async def disconnect(self) -> None:
        try:
            await asyncio.wait_for(self.room.disconnect(), DISCONNECT_TIMEOUT)
        except Exception:
            pass


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

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

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

    async def join_with_token(self, token: str, label: str = "client") -> Client:
        client = self.new(label)
        await client.connect(self.server.ws_url, token)
        return client

    async def expect_refused(self, token: str, label: str = "refused") -> BaseException:
        """Connect with `token`, expect the SDK's connect to fail (not to hang
        past the bound), and return the exception."""
        client = self.new(label)
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
