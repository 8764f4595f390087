#!/usr/bin/env python3
"""Whole-server load benchmark, Aviary, Janus and mediasoup side by side in one run.

For each subscriber count, a fresh `aviary serve`, then a fresh Janus (VideoRoom plugin),
then a fresh mediasoup worker (behind bench/mediasoup/server.mjs) get the same load from
`aviary load-test`: 1 video publisher at --video-bitrate (or the publishers given with
--video-publishers / --audio-publishers, or a room shape of LiveKit's benchmarks with
--preset livestream|audio|meeting), N subscribers. The server's CPU
time (/proc/PID/stat) and RSS (/proc/PID/status) are sampled when the load tester prints
`phase: measuring` and `phase: draining` (the measured window); the packets its subscribers
received in that window are the forwarded packets, for every server alike. mediasoup's
server is its worker process; the Node process that signals for it is reported apart.
Prints a Markdown table with the ratio of each peer to Aviary in CPU per packet.

    cargo build --release -p aviary
    python3 bench/load.py --subscribers 10 100 500 1000 --duration 20

Janus's ICE library never gathers loopback interfaces, so the whole run happens inside a
private network namespace (scripts/testnet.sh, as root) where 127.0.0.2 sits on a veth:
Janus is pinned to that interface with `ice_enforce_list` and the load tester uses
127.0.0.2 as its own address toward it. Aviary and its load tester use 127.0.0.1. Janus gets
its own config folder with only the VideoRoom plugin and the WebSocket transport, on
loopback, and `event_loops = 2` (one media thread per core, as Aviary's workers).
mediasoup binds 127.0.0.2 the same way. Without the `janus` binary (Debian package `janus`)
or the mediasoup worker (built by bench/mediasoup/build.sh, about 8 minutes) that server is
left out.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import available, in_namespace, raise_nofile, start  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_one(binary: str, server, subscribers: int, duration: int, shape: list[str]) -> dict:
    """One measured load-test run; `shape` is the load tester's room-shape flags."""
    pid = server.media_pid()
    helpers = server.helper_pids()
    try:
        time.sleep(0.5)
        idle_rss = rss_kib(pid)
        load = subprocess.Popen(
            [binary, "load-test", *server.load_args(), "--room", "bench",
             *shape, "--subscribers", str(subscribers), "--duration", f"{duration}s", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=raise_nofile,
        )
        marks: dict[str, tuple[float, int, float, float]] = {}
        # The load tester's last words, for the error message if it fails.
        tail: collections.deque[str] = collections.deque(maxlen=20)

        def watch() -> None:
            assert load.stderr is not None
            for line in load.stderr:
                tail.append(line.rstrip())
                if line.startswith("phase: "):
                    phase = line.split()[1] if len(line.split()) > 1 else ""
                    key = {"measuring": "start", "draining": "end"}.get(phase)
                    if key and key not in marks:
                        try:
                            marks[key] = (
                                cpu_seconds(pid),
                                rss_kib(pid),
                                cpu_seconds(load.pid),
                                sum(cpu_seconds(h) for h in helpers.values()),
                            )
                        except OSError as e:  # reported below as a missing mark
                            print(f"sampling failed at {phase}: {e}", file=sys.stderr)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        # stderr belongs to the watcher thread; only stdout is read here.
        assert load.stdout is not None
        out = load.stdout.read()
        load.wait(timeout=duration + 600)
        t.join(timeout=5)
        if load.returncode != 0:
            raise RuntimeError(
                f"{server.name}: the load tester failed ({load.returncode}):\n" + "\n".join(tail)
            )
        report = json.loads(out)
        if "start" not in marks or "end" not in marks:
            raise RuntimeError(f"{server.name}: the load tester never reached the measured window")
        (c0, _, l0, h0), (c1, rss, l1, h1) = marks["start"], marks["end"]
        packets = report["packets_received"]
        return {
            "server": server.name,
            "subscribers": subscribers,
            "connected": report["subscribers_connected"],
            "cpu_us_per_packet": (c1 - c0) * 1e6 / max(packets, 1),
            "forwarded_per_s": packets / report["seconds"],
            "server_cpu_percent": 100 * (c1 - c0) / report["seconds"],
            "helper_cpu_percent": 100 * (h1 - h0) / report["seconds"] if helpers else None,
            "load_cpu_percent": 100 * (l1 - l0) / report["seconds"],
            "rss_kib_per_subscriber": (rss - idle_rss) / max(subscribers, 1),
            "loss_percent": report["loss_percent"],
            "delay_ms_p50": report["delay_ms_p50"],
            "delay_ms_p99": report["delay_ms_p99"],
            "first_media_ms_p50": report["first_media_ms_p50"],
        }
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/aviary"))
    ap.add_argument("--subscribers", type=int, nargs="+", default=[10, 100, 500, 1000])
    ap.add_argument("--duration", type=int, default=20)
    # The room's shape: the load tester's (1 video publisher at 600k) unless given.
    ap.add_argument("--video-bitrate")
    ap.add_argument("--video-publishers", type=int)
    ap.add_argument("--audio-publishers", type=int)
    # LiveKit's benchmark shapes (aviary load-test --preset): livestream, audio, meeting;
    # the counts above are then the preset's unless given.
    ap.add_argument("--preset", choices=["livestream", "audio", "meeting"])
    # aviary-nocc: Aviary with rtc.congestion_control off, to measure what it costs.
    ap.add_argument("--servers", nargs="+", default=["aviary", "janus", "mediasoup"],
                    choices=["aviary", "aviary-nocc", "janus", "mediasoup"])
    a = ap.parse_args()
    status = in_namespace(__file__, sys.argv[1:])  # see the module docs
    if status is not None:
        return status
    servers = available(a.servers)
    shape = ["--preset", a.preset] if a.preset else []
    for flag, value in (("--video-publishers", a.video_publishers),
                        ("--audio-publishers", a.audio_publishers),
                        ("--video-bitrate", a.video_bitrate)):
        if value is not None:
            shape += [flag, str(value)]
    workdir = tempfile.mkdtemp(prefix="aviary-bench-")
    print("| subscribers | server | connected | server CPU-µs / forwarded packet | ÷ Aviary | "
          "forwarded pkt/s | server CPU % | its signaling CPU % | load tester CPU % | "
          "RSS KiB / subscriber | loss % | delay p50 / p99 ms | first media p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for n in a.subscribers:
            rows = {}
            for name in servers:
                server = start(name, workdir, a.binary)
                rows[name] = run_one(a.binary, server, n, a.duration, shape)
            for name, r in rows.items():
                ratio = ""
                if name != "aviary" and "aviary" in rows:
                    ratio = f"{r['cpu_us_per_packet'] / max(rows['aviary']['cpu_us_per_packet'], 1e-9):.2f}"
                helper = "" if r["helper_cpu_percent"] is None else f"{r['helper_cpu_percent']:.0f}"
                print(f"| {n} | {name} | {r['connected']} | {r['cpu_us_per_packet']:.2f} | {ratio} | "
                      f"{r['forwarded_per_s']:.0f} | {r['server_cpu_percent']:.0f} | {helper} | "
                      f"{r['load_cpu_percent']:.0f} | "
                      f"{r['rss_kib_per_subscriber']:.1f} | {r['loss_percent']:.3f} | "
                      f"{r['delay_ms_p50']:.2f} / {r['delay_ms_p99']:.2f} | "
                      f"{r['first_media_ms_p50']:.1f} |", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
