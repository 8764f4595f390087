"""Turns inputs captured from real traffic (AVIARY_CAPTURE_DIR; see README.md) into seed
corpora: captured signaling frames, datagrams, Twirp bodies and tokens are copied as they
are, and the SDPs inside captured offers and answers become the `sdp` target's seeds.

Usage: python3 fuzz/seed_from_capture.py CAPTURE_DIR fuzz/corpus
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from google.protobuf import json_format
from livekit.protocol import rtc as sig


def put(corpus: Path, target: str, data: bytes) -> None:
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main() -> None:
    capture, corpus = Path(sys.argv[1]), Path(sys.argv[2])
    for target in ("signal_frame", "datagram", "twirp", "access_token"):
        for f in sorted((capture / target).glob("*")):
            put(corpus, target, f.read_bytes())
    for f in sorted((capture / "signal_frame").glob("*")):
        data = f.read_bytes()
        try:
            if data[0] % 2 == 0:
                req = sig.SignalRequest.FromString(data[1:])
            else:
                req = json_format.Parse(data[1:].decode(), sig.SignalRequest(), ignore_unknown_fields=True)
        except Exception:  # noqa: BLE001 - captured junk (the robustness tests send some)
            continue
        kind = req.WhichOneof("message")
        if kind == "offer":
            put(corpus, "sdp", b"\x00" + req.offer.sdp.encode())
        elif kind == "answer":
            put(corpus, "sdp", b"\x01" + req.answer.sdp.encode())


if __name__ == "__main__":
    main()
