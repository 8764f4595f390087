"""The load tester's mediasoup adapter against a real mediasoup worker behind
bench/mediasoup/server.mjs, as the side-by-side benchmark (bench/load.py) uses it. The
worker takes minutes to build, so CI does not build it: without it these tests are skipped
and say the command that builds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import server_binary

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from servers import MEDIASOUP_BUILD, Mediasoup, mediasoup_available  # noqa: E402

if not mediasoup_available():
    pytest.skip(f"no mediasoup worker: build it with `{MEDIASOUP_BUILD}` (about 8 minutes)", allow_module_level=True)


def test_load_test_drives_mediasoup(tmp_path: Path) -> None:
    mediasoup = Mediasoup(str(tmp_path))
    try:
        argv = [
            str(server_binary()), "load-test", *mediasoup.load_args(), "--room", "ms",
            "--video-publishers", "1", "--audio-publishers", "1", "--subscribers", "4",
            "--duration", "3s", "--video-bitrate", "300k", "--json",
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        mediasoup.stop()
    log = Path(mediasoup.log.name).read_text(errors="replace")
    assert out.returncode == 0, out.stderr + "\n--- mediasoup log ---\n" + log[-3000:]
    r = json.loads(out.stdout)
    assert r["subscribers_connected"] == 4, log[-3000:]
    video, audio = r["tracks"]
    # 300 kbps of 1100-byte packets for 3 s is about 100 packets; audio 50 a second.
    assert video["packets_sent"] >= 80, video
    assert audio["packets_sent"] >= 120, audio
    for track in (video, audio):
        assert track["packets_received"] == 4 * track["packets_sent"], track
    assert r["loss_percent"] == 0
    assert 0 < r["first_media_ms_p50"] < 60_000  # sane, not a benchmark bound


def test_benchmark_script_measures_mediasoup_beside_aviary() -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "load.py"), "--binary", str(server_binary()),
         "--subscribers", "2", "--duration", "2", "--servers", "aviary", "mediasoup"],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "AVIARY_BENCH_NETNS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| 2 |")]
    assert [r[1].strip() for r in rows] == ["aviary", "mediasoup"], out.stdout
    for r in rows:
        assert r[2].strip() == "2", f"both subscribers connected: {r}"
        assert float(r[3]) > 0, f"CPU per forwarded packet measured: {r}"
        assert float(r[10]) == 0, f"no loss: {r}"
    assert float(rows[1][4]) > 0, "the mediasoup ÷ Aviary ratio"
    assert float(rows[1][7]) >= 0, "mediasoup's signaling CPU reported apart"
