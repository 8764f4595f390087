"""`aviary load-test` against the server: every subscriber connects, and every packet the
synthetic publishers send in the measured run reaches every subscriber."""

from __future__ import annotations

import json
import subprocess

from harness import Server, server_binary, unique


def test_short_load_test_reports_zero_loss(server: Server) -> None:
    argv = [
        str(server_binary()), "load-test",
        "--url", server.ws_url, "--api-key", server.api_key, "--api-secret", server.api_secret,
        "--room", unique("load"),
        "--video-publishers", "1", "--audio-publishers", "1", "--subscribers", "8",
        "--duration", "4s", "--video-bitrate", "400k", "--json",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["subscribers_connected"] == 8
    assert len(r["tracks"]) == 2
    for t in r["tracks"]:
        # 400 kbps of 1100-byte packets for 4 s is about 180; audio is 50 packets/s.
        assert t["packets_sent"] >= (150 if t["kind"] == "video" else 180), t
        assert t["packets_received"] == t["packets_sent"] * 8, t
    assert r["loss_percent"] == 0
    assert r["packets_received"] == sum(t["packets_received"] for t in r["tracks"])
    assert 0 < r["delay_ms_p50"] <= r["delay_ms_p99"] < 100
    assert 0 < r["join_ms_p50"] <= r["join_ms_p99"] < 5000
    assert 300_000 < r["bitrate_per_subscriber_bps"] < 700_000
