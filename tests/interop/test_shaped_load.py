"""The shaped side-by-side scenario (bench/shaped.py): `aviary load-test --simulcast` with
every subscriber's downlink shaped inside the load tester, against Aviary and Janus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import server_binary

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from servers import Aviary  # noqa: E402


def load_test(server, *extra: str, seconds: int = 12) -> dict:
    argv = [
        str(server_binary()), "load-test", *server.load_args(), "--room", "shaped",
        "--video-publishers", "1", "--audio-publishers", "1", "--simulcast",
        "--video-bitrate", "1.5M", "--subscribers", "2", "--duration", f"{seconds}s", "--json",
        *extra,
    ]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_a_narrow_downlink_settles_on_the_low_layer_and_an_open_one_gets_the_top() -> None:
    open_link = load_test(Aviary(str(server_binary())))
    v = open_link["video"]
    assert v["streams"] == 2, v
    # Unshaped: the top layer, every frame decodable, nothing frozen.
    assert v["layers_percent"][2] > 95, v
    assert v["frames_per_s"] > 27, v
    assert v["freezes_per_stream"] == 0, v

    narrow = load_test(Aviary(str(server_binary())), "--subscriber-rate", "400k", "--subscriber-queue", "32k")
    v = narrow["video"]
    # 400 kbit/s holds the low layer (150 kbit/s) and the audio, not the middle (450).
    assert v["layers_percent"][0] > 70, v
    # Once settled (the run's second half) it plays on: few frames missing, barely frozen.
    assert v["settled_frames_per_s"] > 25, v
    assert v["settled_frozen_percent"] < 10, v
    assert narrow["audio_loss_percent"] < 2, narrow
    assert narrow["bitrate_per_subscriber_bps"] < 400_000, narrow


if not shutil.which("janus") and not os.environ.get("CI"):
    janus_missing = pytest.mark.skip(reason="no janus binary (apt-get install janus); CI installs it")
else:
    janus_missing = pytest.mark.skipif(False, reason="")


@janus_missing
def test_the_benchmark_script_puts_aviary_and_janus_on_the_same_link() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "shaped.py"), "--binary", str(server_binary()),
         "--subscribers", "2", "--duration", "6", "--scenarios", "narrow",
         "--servers", "aviary", "janus"],
        capture_output=True, text=True, timeout=300,
        # Already inside the test network namespace: no second one.
        env={**os.environ, "AVIARY_BENCH_NETNS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        r[1].strip(): r
        for r in (line.split("|")[1:-1] for line in out.stdout.splitlines())
        if len(r) > 8 and r[1].strip() in ("aviary", "janus")
    }
    assert set(rows) == {"aviary", "janus"}, out.stdout
    # Janus forwards the layer the subscriber asked for (the top one, 900 kbit/s) whatever
    # its link carries, so most of it is lost; Aviary's allocator moves the subscriber down.
    assert float(rows["janus"][6]) > 20, out.stdout
    assert float(rows["aviary"][8].split("/")[0]) > 50, out.stdout
    for r in rows.values():
        # Every column measured: frames/s, freezes, frozen %, loss after repair.
        [float(r[i].split(",")[0]) for i in (2, 3, 4, 6)]
