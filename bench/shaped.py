#!/usr/bin/env python3
"""Subscribers on bad links, Aviary, Janus and mediasoup side by side in one run.

The same room for each server: one publisher sends a video track as three simulcast layers
(rids q/h/f at 10/30/60 % of --video-bitrate, VP8-shaped with key frames every 2 s and on
request), another an audio track; --subscribers subscribers receive both, each through its
own shaped downlink. The shaping happens inside `aviary load-test` (a token bucket with a
drop-tail queue and seeded loss, the same code as `aviary netem`), on the datagrams each
subscriber's socket receives, so that every server meets the same link whatever ports it
uses. Each subscriber's str0m peer sends transport-wide congestion control feedback and
NACKs, as browsers do; what the server does with them is its own.

Scenarios:
  narrow  the downlink is --rate (400 kbit/s) with a 32 KiB queue: only the low layer and
          the audio fit.
  lossy   no rate limit, --loss (5 %) random loss on the downlink.

Per server and scenario, at the subscriber, averaged over subscribers: frames decoded per
second (a frame counts when all its packets arrived and the frames it depends on were
decoded: what a decoder could show), freezes (gaps over 200 ms between decoded frames, the
measured window's edges included) and the time frozen, over the whole run and over its
second half (once adaptation had time to settle), video loss after retransmissions,
audio loss, and which layers the frames came from.

    cargo build --release -p aviary
    python3 bench/shaped.py --duration 30

Runs inside the private network namespace of scripts/testnet.sh (as root), as bench/load.py
does; servers that are not installed are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from servers import available, in_namespace, start  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(binary: str, server, a: argparse.Namespace, shaping: list[str]) -> dict:
    try:
        out = subprocess.run(
            [binary, "load-test", *server.load_args(), "--room", "shaped",
             "--video-publishers", "1", "--audio-publishers", "1", "--simulcast",
             "--video-bitrate", a.video_bitrate, "--subscribers", str(a.subscribers),
             "--duration", f"{a.duration}s", "--json", *shaping],
            capture_output=True, text=True, timeout=a.duration + 300,
        )
        if out.returncode != 0:
            tail = "\n".join(out.stderr.strip().splitlines()[-10:])
            raise RuntimeError(f"{server.name}: the load tester failed ({out.returncode}):\n{tail}")
        return json.loads(out.stdout)
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/aviary"))
    ap.add_argument("--subscribers", type=int, default=4)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--video-bitrate", default="1.5M")
    ap.add_argument("--rate", default="400k")
    ap.add_argument("--loss", default="5%")
    ap.add_argument("--scenarios", nargs="+", default=["narrow", "lossy"], choices=["narrow", "lossy", "clear"])
    ap.add_argument("--servers", nargs="+", default=["aviary", "janus", "mediasoup"],
                    choices=["aviary", "janus", "mediasoup"])
    a = ap.parse_args()
    status = in_namespace(__file__, sys.argv[1:])
    if status is not None:
        return status
    servers = available(a.servers)
    shapes = {
        "narrow": ["--subscriber-rate", a.rate, "--subscriber-queue", "32k"],
        "lossy": ["--subscriber-loss", a.loss],
        "clear": [],
    }
    workdir = tempfile.mkdtemp(prefix="aviary-shaped-")
    print("| link | server | frames/s decoded | freezes / subscriber | frozen % | "
          "2nd half: frames/s, frozen % | "
          "video loss after repair % | audio loss % | frames from low / mid / high layer % | "
          "received kbit/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        for scenario in a.scenarios:
            for name in servers:
                server = start(name, workdir, a.binary)
                r = run_one(a.binary, server, a, shapes[scenario])
                v = r["video"]
                link = {"narrow": f"{a.rate}bit/s, 32 KiB queue", "lossy": f"{a.loss} loss",
                        "clear": "unshaped"}[scenario]
                layers = " / ".join(f"{p:.0f}" for p in v["layers_percent"])
                print(f"| {link} | {name} | {v['frames_per_s']:.1f} | {v['freezes_per_stream']:.1f} | "
                      f"{v['frozen_percent']:.1f} | "
                      f"{v['settled_frames_per_s']:.1f}, {v['settled_frozen_percent']:.1f} | "
                      f"{v['loss_percent']:.2f} | "
                      f"{r['audio_loss_percent']:.2f} | {layers} | "
                      f"{r['bitrate_per_subscriber_bps'] / 1000:.0f} |", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
