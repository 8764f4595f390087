"""Prometheus metrics at /metrics on --prometheus-port count what really happened: rooms,
participants, tracks, packets in and out, forwarded RTP, and the forwarding delay."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from livekit import rtc

from harness import (
    Clients,
    Server,
    SolidVideoSender,
    free_port,
    http_request,
    publish_track,
    unique,
    wait_until,
)
from test_media import publish_tone, wait_track_subscribed


def available_parallelism() -> int:
    """What Rust's std::thread::available_parallelism (the server's worker count) says
    here: the CPUs this process may run on, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cpus


# One media worker per core the server may run on (it runs on this machine).
WORKERS = available_parallelism()


def scrape_text(port: int) -> str:
    answer = http_request(f"http://127.0.0.2:{port}/metrics")
    assert answer.status == 200, answer
    return answer.body.decode()


def scrape(port: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in scrape_text(port).splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return totals


def scrape_by_protocol(port: int, protocol: str) -> dict[str, float]:
    """Totals of the series labelled with this transport protocol."""
    totals: dict[str, float] = {}
    for line in scrape_text(port).splitlines():
        m = re.match(r"^([a-z_]+)\{[^}]*protocol=\"" + protocol + r"\"[^}]*\} ([0-9.e+-]+)$", line)
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(2))
    return totals


async def test_metrics_count_rooms_tracks_and_packets(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_STREAM)
    server = Server(tmp_path / "metrics-server.log", ["--prometheus-port", str(port)]).start()
    try:
        before = scrape(port)
        assert before["aviary_rooms"] == 0 and before["aviary_participants"] == 0
        assert before.get("aviary_rtp_forwarded_total", 0) == 0
        assert before["aviary_panics_total"] == 0
        room = unique("metrics")
        async with Clients(server) as clients:
            alice = await clients.join(room, "alice")
            bob = await clients.join(room, "bob")
            sender, publication = await publish_tone(alice)
            try:
                await wait_track_subscribed(bob, publication.sid)

                def counted() -> bool:
                    m = scrape(port)
                    return m.get("aviary_rtp_forwarded_total", 0) > 100 and m.get(
                        "aviary_subscribed_tracks", 0
                    ) >= 1

                await wait_until(counted, timeout=15, what="forwarded packets in /metrics")
                m = scrape(port)
                assert m["aviary_rooms"] == 1
                assert m["aviary_participants"] == 2
                assert m["aviary_published_tracks"] == 1
                assert m["aviary_producers"] == 1
                assert m["aviary_rtp_received_total"] >= m["aviary_rtp_forwarded_total"] * 0.9
                assert m["aviary_packets_in_total"] > m["aviary_rtp_received_total"]
                assert m["aviary_packets_out_total"] > m["aviary_rtp_forwarded_total"]
                assert m["aviary_bytes_out_total"] > 0 and m["aviary_bytes_in_total"] > 0
                # every client here is on UDP: nothing went over ICE/TCP
                tcp = scrape_by_protocol(port, "tcp")
                assert tcp.get("aviary_packets_in_total", 0) == 0, tcp
                assert tcp.get("aviary_packets_out_total", 0) == 0, tcp
                udp = scrape_by_protocol(port, "udp")  # scraped later: counters only grow
                assert udp["aviary_packets_in_total"] >= m["aviary_packets_in_total"], udp
                assert m["aviary_forwarding_delay_seconds_count"] > 0
                assert m["aviary_worker_busy_microseconds_total"] > 0
                assert m["aviary_panics_total"] == 0
            finally:
                await sender.stop()
        await wait_until(
            lambda: scrape(port)["aviary_participants"] == 0, what="participants to drop to 0"
        )
    finally:
        server.stop()


async def test_metrics_port_from_config_counts_keyframe_requests_drops_and_workers(
    tmp_path: Path,
) -> None:
    """`prometheus.port` in the config file; a video subscriber makes the server ask the
    publisher for keyframes; datagrams nobody owns are counted as dropped; per-worker series
    carry a `worker` label and the delay histogram has buckets."""
    port = free_port(socket.SOCK_STREAM)
    server = Server(
        tmp_path / "metrics-config.log", ["--config-body", f"prometheus:\n  port: {port}\n"]
    ).start()
    try:
        before = scrape(port)
        # Garbage from an address no transport knows, on both workers' ports.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for worker in range(WORKERS):
                for _ in range(5):
                    s.sendto(b"\x00not stun or rtp", ("127.0.0.2", server.udp_port + worker))
        await wait_until(
            lambda: scrape(port).get("aviary_dropped_packets_total", 0)
            >= before.get("aviary_dropped_packets_total", 0) + 5,
            timeout=10,
            what="stray datagrams counted as dropped",
        )
        room = unique("metrics-video")
        async with Clients(server) as clients:
            alice = await clients.join(room, "alice")
            bob = await clients.join(room, "bob")
            sender = SolidVideoSender(320, 240, (10, 200, 10, 255), name="cam").start()
            try:
                options = rtc.TrackPublishOptions(
                    source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False
                )
                publication = await publish_track(alice, sender.track, options)
                await wait_track_subscribed(bob, publication.sid)
                await wait_until(
                    lambda: scrape(port).get("aviary_plis_sent_total", 0) >= 1,
                    timeout=15,
                    what="a keyframe request to the publisher in /metrics",
                )
                text = scrape_text(port)
                workers = set(
                    re.findall(r'^aviary_packets_in_total\{worker="(\d+)",protocol="udp"\}', text, re.M)
                )
                assert workers == {str(w) for w in range(WORKERS)}, f"per-worker series: {sorted(workers)}"
                buckets = re.findall(r'^aviary_forwarding_delay_seconds_bucket\{[^}]*le="([^"]+)"', text, re.M)
                assert len(set(buckets)) >= 5 and "+Inf" in buckets, buckets
                assert scrape(port)["aviary_subscribed_tracks"] >= 1
            finally:
                await sender.stop()
    finally:
        server.stop()
