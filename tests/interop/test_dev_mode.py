"""`aviary serve --dev` as a newcomer runs it (no --bind, no --node-ip): the
banner says where to connect and with which key, and a browser on the same
machine gets its media over UDP, at an interface address the server found
itself (libwebrtc ignores loopback interfaces; here the namespace's veth
carries 127.0.0.2, as a laptop's Wi-Fi carries its LAN address)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from browser import Browsers
from harness import NODE_IP, Server, unique
from test_browser import connect_page, publish_page

WORKERS = os.cpu_count() or 1


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
