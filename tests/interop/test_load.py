"""`aviary load-test` against the server: every subscriber connects, and every packet the
synthetic publishers send in the measured run reaches every subscriber."""

from __future__ import annotations

import json
import subprocess

from harness import Server, server_binary, unique


def load_test(server: Server, room: str, *args: str) -> list[str]:
    """The `aviary load-test` command line against `server`."""
    return [
        str(server_binary()), "load-test",
        "--url", server.ws_url, "--api-key", server.api_key, "--api-secret", server.api_secret,
        "--room", unique(room), *args,
    ]


def test_short_load_test_reports_zero_loss(server: Server) -> None:
    argv = load_test(
        server, "load", "--video-publishers", "1", "--audio-publishers", "1",
        "--subscribers", "8", "--duration", "4s", "--video-bitrate", "400k", "--json",
    )
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
    # Measured, not bounded: the figures live in docs/benchmarks.md. These only say the
    # numbers are sane, with room for a machine ten times slower than this one.
    assert 0 < r["delay_ms_p50"] <= r["delay_ms_p99"] < 2000
    assert 0 < r["join_ms_p50"] <= r["join_ms_p99"] < 60_000
    assert 300_000 < r["bitrate_per_subscriber_bps"] < 700_000


def test_load_test_shows_progress_and_a_table(server: Server) -> None:
    argv = load_test(
        server, "load-table", "--video-publishers", "1", "--subscribers", "3", "--duration", "2s"
    )
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # A progress bar while it runs (on stderr), full by the end.
    assert "[" + "#" * 24 + "]" in out.stderr, out.stderr[-500:]
    assert "phase: measuring" in out.stderr
    # Then a readable table: the subscribers connected, zero loss, one video track whose
    # packets all reached the three subscribers.
    rows = dict(
        (line[:23].strip(), line[23:].strip())
        for line in out.stdout.splitlines()
        if len(line) > 23 and not line.startswith("TRACK")
    )
    assert rows.get("subscribers connected") == "3", out.stdout
    assert rows.get("loss") == "0.000 %", out.stdout
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("TRACK"))
    tracks = [line.split() for line in lines[header + 1 :] if line.strip()]
    assert len(tracks) == 1 and tracks[0][1] == "video", out.stdout
    sent, received = int(tracks[0][3]), int(tracks[0][4])
    assert sent > 0 and received == 3 * sent, out.stdout


def test_the_meeting_preset_is_an_n_by_n_room_of_simulcast_cameras(server: Server) -> None:
    argv = load_test(server, "meeting", "--preset", "meeting", "--subscribers", "3", "--duration", "4s", "--json")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["shape"] == {
        "video_publishers": 3, "audio_publishers": 3, "subscribers": 3,
        "video_bitrate_bps": 1_700_000, "simulcast": True,
    }
    assert r["subscribers_connected"] == 3
    assert [t["kind"] for t in r["tracks"]] == ["video"] * 3 + ["audio"] * 3
    # Every subscriber decodes every camera (whichever layer it gets) and hears every
    # microphone whole.
    v = r["video"]
    assert v["streams"] == 9, v
    assert v["frames_per_s"] > 15, v
    assert r["audio_loss_percent"] == 0, r
