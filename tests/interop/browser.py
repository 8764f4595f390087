"""Chromium pages running livekit-client, for the browser interop tests.

Each `Page` is one `node tests/browser/driver.mjs` process: it serves a small
test page from 127.0.0.1, starts Debian's Chromium through playwright-core and
calls `window.aviary.*` in the page for every `await page.call(...)` (JSON
lines over the process's stdin/stdout; see tests/browser/driver.mjs and
tests/browser/page/client.js). The driver's stderr, a trace of the page's
console, its signaling messages and its ICE states, goes to a log file that a
failing test's report includes.

Everything here is bounded in time, and every process is ended by its pid.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import wave
from pathlib import Path
from typing import Any, Optional

import numpy as np

from harness import REPO_ROOT

BROWSER_DIR = REPO_ROOT / "tests" / "browser"
DRIVER = BROWSER_DIR / "driver.mjs"

# Upper bounds, in seconds.
BROWSER_START_TIMEOUT = float(os.environ.get("AVIARY_BROWSER_START_TIMEOUT", "45"))
BROWSER_CALL_TIMEOUT = 60.0
BROWSER_CLOSE_TIMEOUT = 10.0


def chromium_path() -> str:
    return os.environ.get("AVIARY_CHROMIUM", "/usr/bin/chromium")


def missing_prerequisites() -> list[str]:
    """What the browser tests need and this machine lacks (empty: all there)."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node (Node.js) on PATH")
    if not os.access(chromium_path(), os.X_OK):
        missing.append(f"Chromium at {chromium_path()} (apt-get install chromium, or set AVIARY_CHROMIUM)")
    for pkg in ("livekit-client", "playwright-core", "@livekit/protocol"):
        if not (BROWSER_DIR / "node_modules" / pkg / "package.json").is_file():
            missing.append(f"{pkg} in tests/browser/node_modules (npm ci --prefix tests/browser)")
    return missing


def selected_protocols(pcs: list[dict[str, Any]]) -> list[str]:
    """The protocol of the local candidate of each peer connection's selected pair (the
    nominated one that succeeded), from the page's `peerConnections` stats."""
    found = []
    for pc in pcs:
        local = {c["id"]: c for c in pc.get("local", [])}
        for pair in pc.get("pairs", []):
            if pair["state"] == "succeeded" and pair["nominated"] and pair["local"] in local:
                found.append(local[pair["local"]]["protocol"])
    return found


# What the pages' microphones play (Chromium's fake capture device reads it, looping).
PAGE_TONE_HZ = 660.0


def tone_wav(directory: Path, frequency: float = PAGE_TONE_HZ, seconds: float = 2.0) -> Path:
    """A 16-bit 48 kHz mono WAV of a sine tone, written once."""
    path = directory / f"page-tone-{int(frequency)}.wav"
    if not path.exists():
        rate = 48000
        n = int(rate * seconds)  # a whole number of periods at 660 Hz: no click at the loop
        samples = (np.sin(2 * np.pi * frequency * np.arange(n) / rate) * 0.5 * 32767).astype("<i2")
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(samples.tobytes())
    return path


class PageError(AssertionError):
    """A page function failed (threw, or ran out of its time bound)."""


class Page:
    """One Chromium page with livekit-client in it."""

    def __init__(self, label: str, log_path: Path, url: Optional[str] = None) -> None:
        self.label = label
        # Another page than ours (see AVIARY_PAGE_URL in driver.mjs); drive it with
        # call("evaluate", "<expression>").
        self.url = url
        self.log_path = log_path
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.info: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._log = None
        # What Browsers checks at the end of a passing test: the ICE transport every peer
        # connection selected, and that the SDK never reconnected unless the test made it.
        self.transport = "udp"
        self.interruptions_expected = False

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    async def start(self) -> "Page":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"$ node {DRIVER}  ({self.label})\n".encode())
        self._log.flush()
        env = dict(os.environ)
        env["AVIARY_FAKE_AUDIO"] = str(tone_wav(self.log_path.parent))
        if self.url:
            env["AVIARY_PAGE_URL"] = self.url
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(DRIVER),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            cwd=str(BROWSER_DIR),
            limit=64 * 1024 * 1024,
        )
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), BROWSER_START_TIMEOUT)
        except asyncio.TimeoutError:
            await self.close()
            raise AssertionError(
                f"the browser ({self.label}) did not start within {BROWSER_START_TIMEOUT}s\n"
                + self.log_tail()
            ) from None
        if not line:
            await self.close()
            raise AssertionError(f"the browser driver ({self.label}) exited at startup\n" + self.log_tail())
        self.info = json.loads(line)
        if not self.info.get("ready"):
            await self.close()
            raise AssertionError(
                f"the browser ({self.label}) failed to start: {self.info.get('error')}\n" + self.log_tail()
            )
        return self

    async def call(self, fn: str, *args: Any, timeout: float = BROWSER_CALL_TIMEOUT) -> Any:
        """Run `window.aviary[fn](*args)` in the page and return its value.
        The page gets `timeout` seconds; this side waits a little longer so
        that the page's own, more telling error arrives first."""
        if self.proc is None or self.proc.returncode is not None:
            raise PageError(f"the browser ({self.label}) is not running")
        async with self._lock:
            req_id = next(self._ids)
            req = {"id": req_id, "fn": fn, "args": list(args), "timeout_ms": int(timeout * 1000)}
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            await self.proc.stdin.drain()
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), timeout + 10)
            except asyncio.TimeoutError:
                raise PageError(f"{self.label}: {fn} got no answer within {timeout + 10}s") from None
            if not line:
                raise PageError(f"{self.label}: the browser driver exited during {fn}")
            answer = json.loads(line)
            if answer.get("id") != req_id:
                raise PageError(f"{self.label}: answer to the wrong request: {answer!r}")
            if not answer.get("ok"):
                raise PageError(f"{self.label}: {fn} failed: {answer.get('error')}")
            return answer.get("value")

    async def check(self) -> list[str]:
        """What the SDK in this page would hide: reconnects the test did not cause, and
        peer connections on another transport than `transport`."""
        if self.proc is None or self.proc.returncode is not None or self.url:
            return []  # gone, or another page than ours (no test functions in it)
        problems = []
        if not self.interruptions_expected:
            names = [e["name"] for e in await self.call("events")]
            unasked = [n for n in names if n in ("reconnecting", "signalReconnecting", "disconnected")]
            if unasked:
                problems.append(f"{self.label}: connection interrupted unasked: {unasked}")
        selected = selected_protocols((await self.call("peerConnections"))["stats"])
        wrong = [p for p in selected if p != self.transport]
        if wrong:
            problems.append(
                f"{self.label}: selected candidate pairs use {selected}, expected {self.transport} "
                "(libwebrtc falls back to ICE/TCP when UDP fails)"
            )
        return problems

    async def close(self) -> None:
        """Close stdin (the driver then closes Chromium and exits); end it by
        pid if it does not."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                if proc.stdin and not proc.stdin.is_closing():
                    proc.stdin.close()
                await asyncio.wait_for(proc.wait(), BROWSER_CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, ProcessLookupError, ConnectionResetError, BrokenPipeError):
                self.kill()
                try:
                    await asyncio.wait_for(proc.wait(), BROWSER_CLOSE_TIMEOUT)
                except asyncio.TimeoutError:
                    pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """End the driver by its pid (Chromium goes with it: the driver's pipe
        to it closes)."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_tail(self, lines: int = 200) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no browser log: {e})"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)


class Browsers:
    """Opens pages and closes every one of them at the end:

        async with browsers:
            page = await browsers.open("web")
    """

    def __init__(self, log_dir: Path, test_name: str) -> None:
        self.log_dir = log_dir
        self.test_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in test_name)[:80]
        self.pages: list[Page] = []

    async def __aenter__(self) -> "Browsers":
        return self

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        try:
            if exc_type is None:
                problems = [p for page in self.pages for p in await page.check()]
                assert not problems, "\n".join(problems)
        finally:
            await self.close()

    async def open(self, label: str = "page", url: Optional[str] = None) -> Page:
        missing = missing_prerequisites()
        if missing:
            raise AssertionError(
                "the browser tests need: " + "; ".join(missing) + ". scripts/test.sh installs "
                "the npm packages; .ci/run installs Chromium."
            )
        page = Page(label, self.log_dir / f"browser-{self.test_name}-{len(self.pages) + 1}-{label}.log", url)
        self.pages.append(page)
        await page.start()
        return page

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.pages), return_exceptions=True)

    def kill_all(self) -> None:
        for p in self.pages:
            p.kill()
