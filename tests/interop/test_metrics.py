"""Prometheus metrics at /metrics on --prometheus-port count what really happened: rooms,
participants, tracks, packets in and out, forwarded RTP, and the forwarding delay."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from harness import Clients, Server, free_port, http_request, unique, wait_until
from test_media import publish_tone, wait_track_subscribed


def scrape(port: int) -> dict[str, float]:
    answer = http_request(f"http://127.0.0.2:{port}/metrics")
    assert answer.status == 200, answer
    totals: dict[str, float] = {}
    for line in answer.body.decode().splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(3))
    return totals


async def test_metrics_count_rooms_tracks_and_packets(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_STREAM)
    server = Server(tmp_path / "metrics-server.log", ["--prometheus-port", str(port)]).start()
    try:
        before = scrape(port)
        assert before["aviary_rooms"] == 0 and before["aviary_participants"] == 0
        assert before.get("aviary_rtp_forwarded_total", 0) == 0
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
                assert m["aviary_forwarding_delay_seconds_count"] > 0
                assert m["aviary_worker_busy_microseconds_total"] > 0
            finally:
                await sender.stop()
        await wait_until(
            lambda: scrape(port)["aviary_participants"] == 0, what="participants to drop to 0"
        )
    finally:
        server.stop()
