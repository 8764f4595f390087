#!/usr/bin/env python3
"""Whole-server load benchmark: starts `aviary serve`, runs `aviary load-test` at 1 publisher
to each subscriber count, and samples the server's CPU time (/proc/PID/stat), RSS
(/proc/PID/status) and forwarded-packet counter (/metrics) at the start and end of the
measured run. Prints a Markdown table.

    cargo build --release -p aviary
    python3 bench/load.py --subscribers 10 100 500 1000 --duration 20

Everything runs on 127.0.0.1 (the load tester is Aviary's own str0m client, which does use
loopback). Each count gets a fresh server, so RSS per subscriber is measured from idle.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def forwarded(metrics_port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(m) for m in re.findall(r"^aviary_rtp_forwarded_total\{[^}]*\} (\S+)$", body, re.M))


def run_one(binary: str, subscribers: int, duration: int, bitrate: str) -> dict:
    port, metrics = free_port(), free_port()
    udp = free_port(socket.SOCK_DGRAM)
    server = subprocess.Popen(
        [binary, "serve", "--dev", "--port", str(port), "--udp-port", str(udp),
         "--tcp-port", str(free_port()), "--prometheus-port", str(metrics)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        idle_rss = rss_kib(server.pid)
        load = subprocess.Popen(
            [binary, "load-test", "--url", f"ws://127.0.0.1:{port}", "--room", "bench",
             "--video-publishers", "1", "--subscribers", str(subscribers),
             "--duration", f"{duration}s", "--video-bitrate", bitrate, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        marks: dict[str, tuple[float, float, int]] = {}

        def watch() -> None:
            assert load.stderr is not None
            for line in load.stderr:
                if os.environ.get("BENCH_DEBUG"):
                    print("stderr:", repr(line), file=sys.stderr)
                if line.startswith("phase: "):
                    parts = line.split()
                    if len(parts) < 2:
                        continue
                    phase = parts[1]
                    if phase == "measuring" or (phase in ("leaving", "done") and "end" not in marks):
                        key = "start" if phase == "measuring" else "end"
                        try:
                            marks[key] = (cpu_seconds(server.pid), forwarded(metrics), rss_kib(server.pid))
                        except Exception as e:  # reported below as a missing mark
                            print(f"sampling failed at {phase}: {e}", file=sys.stderr)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        # stderr belongs to the watcher thread; only stdout is read here.
        assert load.stdout is not None
        out = load.stdout.read()
        load.wait(timeout=duration + 300)
        t.join(timeout=5)
        report = json.loads(out)
        (c0, f0, _), (c1, f1, rss) = marks["start"], marks["end"]
        return {
            "subscribers": subscribers,
            "connected": report["subscribers_connected"],
            "cpu_us_per_packet": (c1 - c0) * 1e6 / max(f1 - f0, 1),
            "forwarded_per_s": (f1 - f0) / report["seconds"],
            "server_cpu_percent": 100 * (c1 - c0) / report["seconds"],
            "rss_kib_per_subscriber": (rss - idle_rss) / max(subscribers, 1),
            "loss_percent": report["loss_percent"],
            "delay_ms_p50": report["delay_ms_p50"],
            "delay_ms_p99": report["delay_ms_p99"],
            "join_ms_p50": report["join_ms_p50"],
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/aviary")
    ap.add_argument("--subscribers", type=int, nargs="+", default=[10, 100, 500, 1000])
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--video-bitrate", default="600k")
    a = ap.parse_args()
    print("| subscribers | connected | server CPU-µs / forwarded packet | forwarded pkt/s | server CPU % | RSS KiB / subscriber | loss % | delay p50 / p99 ms | join p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in a.subscribers:
        r = run_one(a.binary, n, a.duration, a.video_bitrate)
        print(f"| {n} | {r['connected']} | {r['cpu_us_per_packet']:.2f} | {r['forwarded_per_s']:.0f} | "
              f"{r['server_cpu_percent']:.0f} | {r['rss_kib_per_subscriber']:.1f} | {r['loss_percent']:.3f} | "
              f"{r['delay_ms_p50']:.2f} / {r['delay_ms_p99']:.2f} | {r['join_ms_p50']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
