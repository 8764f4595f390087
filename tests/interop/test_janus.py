"""The load tester's Janus adapter against a real Janus (Debian's `janus`, VideoRoom plugin),
as the side-by-side benchmark (bench/load.py) uses it: same config, same namespace address."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import server_binary

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from servers import Janus  # noqa: E402

if not shutil.which("janus") and not os.environ.get("CI"):
    pytest.skip("no janus binary (apt-get install janus); CI installs it", allow_module_level=True)


def test_load_test_drives_janus_videoroom(tmp_path: Path) -> None:
    janus = Janus(str(tmp_path))
    try:
        argv = [
            str(server_binary()), "load-test", *janus.load_args(), "--room", "janus",
            "--video-publishers", "1", "--subscribers", "4",
            "--duration", "3s", "--video-bitrate", "300k", "--json",
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        janus.stop()
    log = (Path(janus.dir) / "janus.log").read_text(errors="replace")
    assert out.returncode == 0, out.stderr + "\n--- janus log ---\n" + log[-3000:]
    r = json.loads(out.stdout)
    assert r["subscribers_connected"] == 4, log[-3000:]
    [track] = r["tracks"]
    # 300 kbps of 1100-byte packets for 3 s is about 100 packets.
    assert track["packets_sent"] >= 80, track
    assert track["packets_received"] == 4 * track["packets_sent"], track
    assert r["loss_percent"] == 0
    assert 0 < r["first_media_ms_p50"] < 60_000  # sane, not a benchmark bound


def test_benchmark_script_runs_end_to_end() -> None:
    """bench/load.py, tiny: both servers measured, a row each, and the ratio column filled."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "load.py"), "--binary", str(server_binary()),
         "--subscribers", "2", "--duration", "2", "--servers", "aviary", "janus"],
        capture_output=True, text=True, timeout=180,
        # Already inside the test network namespace: no second one.
        env={**os.environ, "AVIARY_BENCH_NETNS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| 2 |")]
    assert [r[1].strip() for r in rows] == ["aviary", "janus"], out.stdout
    for r in rows:
        assert r[2].strip() == "2", f"both subscribers connected: {r}"
        assert float(r[3]) > 0, f"CPU per forwarded packet measured: {r}"
        assert float(r[10]) == 0, f"no loss: {r}"
    assert float(rows[1][4]) > 0, "the Janus ÷ Aviary ratio"
