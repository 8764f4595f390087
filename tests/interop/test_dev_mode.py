"""`aviary serve --dev` as a newcomer runs it (no --bind, no --node-ip): the
banner says where to connect and with which key, and a browser on the same
machine gets its media over UDP, at an interface address the server found
itself (libwebrtc ignores loopback interfaces; here the namespace's veth
carries 127.0.0.2, as a laptop's Wi-Fi carries its LAN address)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from browser import BROWSER_DIR, Browsers
from harness import NODE_IP, Server, server_binary, unique, wait_until
from test_browser import connect_page, publish_page

# As the server counts them (available_parallelism honours the CPU affinity mask).
WORKERS = len(os.sched_getaffinity(0)) or 1


@pytest.fixture
def newcomer_server(log_dir: Path) -> Iterator[Server]:
    server = Server(log_dir / f"newcomer-{unique('s')}.log")
    server.as_newcomer = True
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_banner_says_where_to_connect(newcomer_server: Server) -> None:
    log = newcomer_server.log_path.read_text(errors="replace")
    last_udp = newcomer_server.udp_port + WORKERS - 1
    udp = f"UDP {newcomer_server.udp_port}" + (f"-{last_udp}" if WORKERS > 1 else "")
    for want in [
        f"SDK URL     ws://127.0.0.1:{newcomer_server.port}",
        "API key     devkey",
        "API secret  secret",
        f"Media       {udp}, ICE/TCP {newcomer_server.tcp_port}, advertised on {NODE_IP}, 127.0.0.1",
        f"Try page    http://127.0.0.1:{newcomer_server.port}/dev",
        "aviary token create --room my-room --identity me",
        f"aviary join --url ws://127.0.0.1:{newcomer_server.port} --room my-room --identity demo --publish-demo",
    ]:
        assert want in log, f"{want!r} is not in the banner:\n{newcomer_server.log_tail(40)}"
    # Written to a file, the log has no colour codes.
    assert "\x1b[" not in log, "ANSI escape codes in a log written to a file"


async def test_a_browser_on_this_machine_gets_udp(newcomer_server: Server, browsers: Browsers) -> None:
    async with browsers:
        page = await browsers.open("web")
        joined = await connect_page(page, newcomer_server, unique("dev-udp"), "web")
        assert joined["state"] == "connected", joined
        await publish_page(page, camera=True, microphone=False)
        pcs = (await page.call("peerConnections"))["stats"]
        selected = []
        for pc in pcs:
            remote = {c["id"]: c for c in pc.get("remote", [])}
            for pair in pc.get("pairs", []):
                if pair["state"] == "succeeded" and pair["nominated"]:
                    selected.append(remote.get(pair["remote"]))
        assert selected, f"no selected candidate pair: {pcs}"
        for cand in selected:
            assert cand is not None and cand["protocol"] == "udp", (
                f"a connection did not use UDP (libwebrtc fell back to ICE/TCP?): {selected}"
            )
            assert cand["address"] == NODE_IP, (
                f"the server's chosen address is {cand['address']}, expected the interface "
                f"address {NODE_IP}: {selected}"
            )
        # every candidate the server offered is one of its own interface addresses or loopback
        offered = {c["address"] for pc in pcs for c in pc.get("remote", [])}
        assert offered <= {NODE_IP, "127.0.0.1"}, offered


async def test_the_try_page_sees_and_hears_a_demo_participant(
    newcomer_server: Server, browsers: Browsers
) -> None:
    """The README's first steps: the server's /dev page joins with a token from
    `aviary token create`, publishes the (fake) camera and microphone, and shows
    `aviary join --publish-demo`: its pattern plays in a tile, its tone is heard."""
    server = newcomer_server
    room = unique("try")
    page_js = (Path(__file__).parents[2] / "crates/aviary-server/src/http/dev_page.html").read_text()
    pinned = re.search(r"livekit-client@([0-9.]+)/", page_js)
    installed = json.loads((BROWSER_DIR / "package.json").read_text())["dependencies"]["livekit-client"]
    assert pinned and pinned.group(1) == installed, (
        f"the try page loads livekit-client {pinned and pinned.group(1)}, the tests install {installed}"
    )
    token = subprocess.run(
        [str(server_binary()), "token", "create", "--room", room, "--identity", "me"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()
    demo = await asyncio.create_subprocess_exec(
        str(server_binary()), "join", "--url", server.ws_url, "--room", room,
        "--identity", "demo", "--publish-demo", "--duration", "90s",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with browsers:
            url = f"{server.http_url}/dev?token={token}&autojoin=1"
            page = await browsers.open("try", url=url)

            async def shown() -> dict | None:
                state = await page.call("evaluate", SHOWN_JS)
                ok = (
                    "1 other participant" in state["status"]
                    and state["demoVideo"] and state["demoVideo"]["width"] == 320
                    and state["demoVideo"]["time"] > 1.0
                    and state["ownVideo"] and state["ownVideo"]["width"] > 0
                    and state["audioEnergy"] > 0.0
                    and state["framesSent"] > 0
                )
                return state if ok else None

            try:
                await wait_until(shown, timeout=60, interval=0.5, what="the try page to show the demo")
            except AssertionError as e:
                state = await page.call("evaluate", SHOWN_JS)
                raise AssertionError(f"{e}; the page shows {state}") from None
    finally:
        if demo.returncode is None:
            demo.kill()
        await demo.wait()


# What the try page shows: its status line, the demo participant's video (size
# and play time), its own camera, the audio energy received, and video frames
# sent (observe.js keeps every RTCPeerConnection in window.aviaryPeerConnections).
SHOWN_JS = """(async () => {
  const video = (identity) => {
    const tile = document.querySelector(`.tile[data-identity="${identity}"]`);
    const v = tile && tile.querySelector('video');
    return v ? { width: v.videoWidth, time: v.currentTime } : null;
  };
  let audioEnergy = 0, framesSent = 0;
  for (const pc of window.aviaryPeerConnections || []) {
    if (pc.connectionState === 'closed') continue;
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') audioEnergy += s.totalAudioEnergy || 0;
      if (s.type === 'outbound-rtp' && s.kind === 'video') framesSent += s.framesSent || 0;
    });
  }
  const me = document.querySelector('.tile[data-identity="me"]');
  return {
    status: document.getElementById('status').textContent,
    demoVideo: video('demo'),
    ownVideo: video('me'),
    audioEnergy, framesSent,
    tiles: Array.from(document.querySelectorAll('.tile')).map((t) => t.dataset.identity),
    hasOwnTile: Boolean(me),
  };
})()"""
