"""pytest wiring for the interop tests.

* `async def` tests run in a fresh event loop each, under an overall bound
  (no pytest-asyncio needed);
* the `server` fixture is one `aviary serve --dev` process shared by the
  session (restarted if it died), `short_server` one with short room
  timeouts from `--config-body`;
* the `media` fixture is the test media files of media_fixtures.py, made
  with ffmpeg once per session and checked;
* the `browsers` fixture opens Chromium pages running livekit-client
  (browser.py) and ends them after the test;
* a failing test gets the tail of the server and browser log(s) it used in
  its report;
* the run refuses to start outside the test network namespace.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

import media_fixtures
from browser import Browsers
from harness import NODE_IP, STARTED_SERVERS, TEST_TIMEOUT, Server

# Room timeouts for the server that checks them from its configuration.
SHORT_TIMEOUTS_CONFIG = "room: {empty_timeout: 2, departure_timeout: 1}"

SERVER_FIXTURES = ("server", "short_server")

# After this many failed startups of one server, its remaining tests fail at once.
MAX_FAILED_STARTS = 2


# --------------------------------------------------------------------------
# async tests


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def bounded() -> None:
        # A TimeoutError of the test's own (an inner wait_for) is reported as
        # itself, not as this overall bound running out.
        bound = asyncio.timeout(TEST_TIMEOUT)
        try:
            async with bound:
                await func(**kwargs)
        except TimeoutError:
            if bound.expired():
                raise AssertionError(f"test did not finish within {TEST_TIMEOUT}s") from None
            raise

    asyncio.run(bounded())
    return True


# --------------------------------------------------------------------------
# the network namespace


def _node_ip_on_non_loopback() -> bool:
    try:
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    for line in out.splitlines():
        fields = line.split()
        # "<index>: <ifname> inet <addr>/<len> ..."
        if len(fields) >= 4 and fields[1] != "lo" and fields[3].split("/")[0] == NODE_IP:
            return True
    return False


# --------------------------------------------------------------------------
# process exit


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # The Python SDK disposes its native runtime from an atexit hook, and its
    # threads can then call back into an interpreter that is shutting down: the
    # runtime aborts (exit 134) after every test has passed and been reported.
    # Once pytest has written everything, leave without interpreter teardown so
    # the run's exit status is pytest's own.
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("AVIARY_SKIP_NETNS_CHECK") == "1":
        return
    if not _node_ip_on_non_loopback():
        pytest.exit(
            f"{NODE_IP} is not on a non-loopback interface here. libwebrtc ignores "
            "loopback, so run the interop tests inside the test network namespace:\n"
            "    scripts/testnet.sh run -- .venv/bin/python -m pytest tests/interop -v",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


# --------------------------------------------------------------------------
# servers


class _ServerSlot:
    """A server shared by the session, started on first use and restarted if
    it has died since (the test during which it died fails at teardown)."""

    def __init__(self, name: str, log_dir: Path, extra_args: list[str]) -> None:
        self.name = name
        self.log_dir = log_dir
        self.extra_args = extra_args
        self.server: Server | None = None
        self.starts = 0
        self.failed_starts: list[str] = []

    def get(self) -> Server:
        if self.server is not None and self.server.alive():
            return self.server
        if len(self.failed_starts) >= MAX_FAILED_STARTS:
            # don't spend a startup timeout on every remaining test
            pytest.fail(
                f"the server ({self.name}) failed to start {len(self.failed_starts)} times; "
                f"not trying again. First failure:\n{self.failed_starts[0]}"
            )
        self.starts += 1
        log = self.log_dir / f"{self.name}-{self.starts}.log"
        try:
            self.server = Server(log, self.extra_args).start()
        except Exception as e:
            self.server = None
            self.failed_starts.append(str(e))
            raise
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def _log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("AVIARY_TEST_LOG_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("aviary-logs", numbered=True)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the server and browser logs of this run go."""
    return _log_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def _server_slots(log_dir: Path) -> Iterator[dict[str, _ServerSlot]]:
    slots = {
        "server": _ServerSlot("server", log_dir, []),
        "short_server": _ServerSlot(
            "short-server", log_dir, ["--config-body", SHORT_TIMEOUTS_CONFIG]
        ),
    }
    yield slots
    for slot in slots.values():
        slot.stop()


def _use_server(slot: _ServerSlot) -> Iterator[Server]:
    server = slot.get()
    yield server
    if not server.alive():
        pytest.fail(
            f"the server ({slot.name}) exited with status {server.proc.returncode} "
            f"during this test\n{server.log_tail()}"
        )


@pytest.fixture
def server(_server_slots: dict[str, _ServerSlot]) -> Iterator[Server]:
    """`aviary serve --dev` with default settings."""
    yield from _use_server(_server_slots["server"])


@pytest.fixture
def short_server(_server_slots: dict[str, _ServerSlot]) -> Iterator[Server]:
    """`aviary serve --dev --config-body 'room: {empty_timeout: 2, departure_timeout: 1}'`."""
    yield from _use_server(_server_slots["short_server"])


@pytest.fixture(autouse=True)
def no_server_panics() -> Iterator[None]:
    """Fails a test during which any server it used panicked. The server survives a
    caught panic (a room's router, a connection) and the SDKs rejoin by themselves, so
    without this such a test would pass."""
    offsets = {id(s): s.log_size() for s in STARTED_SERVERS}
    yield
    found = []
    for s in STARTED_SERVERS:
        for report in s.panics_since(offsets.get(id(s), 0)):
            found.append(f"{s.log_path}:\n{report}")
    if found:
        pytest.fail("the server panicked during this test:\n" + "\n\n".join(found))


# --------------------------------------------------------------------------
# media files


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> media_fixtures.MediaFiles:
    """VP8, VP9, AV1 and H.264 clips of a solid colour and a 440 Hz tone as
    Ogg Opus and WAV (media_fixtures.py), made with ffmpeg once per session
    and checked to be what they claim."""
    files = media_fixtures.generate(tmp_path_factory.mktemp("media"))
    media_fixtures.verify(files)
    return files


# --------------------------------------------------------------------------
# browsers


@pytest.fixture
def browsers(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Browsers]:
    """Opens Chromium pages with livekit-client (`await browsers.open(label)`,
    inside `async with browsers:`). Any page still running after the test is
    ended by its pid."""
    b = Browsers(log_dir, request.node.name)
    yield b
    b.kill_all()


# --------------------------------------------------------------------------
# server and browser logs in failure reports


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {}) or {}
        for name in SERVER_FIXTURES:
            srv = funcargs.get(name)
            if isinstance(srv, Server):
                report.sections.append((f"aviary log ({name}, pid {srv.pid})", srv.log_tail()))
        b = funcargs.get("browsers")
        if isinstance(b, Browsers):
            for page in b.pages:
                report.sections.append(
                    (f"browser log ({page.label}, driver pid {page.pid})", page.log_tail())
                )
    return report
