"""A publisher's SubscriptionPermission (python: set_track_subscription_permissions)
decides who receives its tracks: a subscriber not allowed stops receiving
them, an allowed one keeps them, and allowing everyone again brings them back.

The python SDK does not surface SubscriptionPermissionUpdate, and (see
test_media._unsubscribe_bob) a server-side unsubscription shows up as the
media stopping: what is checked is the tone each subscriber hears.
"""

from __future__ import annotations

import asyncio

from livekit import rtc

from harness import (
    SUBSCRIBE_TIMEOUT,
    AudioProbe,
    Client,
    Clients,
    Server,
    unique,
    wait_track_subscribed,
    wait_until,
)
from test_media import TONE_HZ, publish_tone


def set_permissions(publisher: Client, allow_all: bool, *identities: str) -> None:
    publisher.room.local_participant.set_track_subscription_permissions(
        allow_all_participants=allow_all,
        participant_permissions=[
            rtc.ParticipantTrackPermission(participant_identity=i, allow_all=True)
            for i in identities
        ],
    )


class Listener:
    """A subscriber's ears on one track, surviving re-subscriptions (a new
    track object after a track_subscribed is listened to as well)."""

    def __init__(self, client: Client, track_sid: str) -> None:
        self.client = client
        self.track_sid = track_sid
        self.probes: list[AudioProbe] = []
        self.seen = 0

    def refresh(self) -> None:
        for e in self.client.events[self.seen:]:
            if e.name == "track_subscribed" and e.args[1].sid == self.track_sid:
                if all(p.track is not e.args[0] for p in self.probes):
                    self.probes.append(AudioProbe(e.args[0], self.client.label))
        self.seen = len(self.client.events)

    def hears(self, since: float) -> bool:
        self.refresh()
        return any(p.report(since).has_tone(TONE_HZ, min_seconds=0.5) for p in self.probes)

    def silent(self, since: float, window: float = 1.0) -> bool:
        """The last `window` seconds (all after `since`) held at most a tenth of loud audio."""
        self.refresh()
        now = asyncio.get_running_loop().time()
        if now - window < since:
            return False
        return all(p.report(now - window, now).loud_seconds <= 0.1 * window for p in self.probes)

    def describe(self, since: float) -> str:
        return "; ".join(p.report(since).describe() for p in self.probes) or "no track"

    async def close(self) -> None:
        for p in self.probes:
            await p.close()


async def test_only_allowed_subscribers_receive_a_track(server: Server) -> None:
    room = unique("perms")
    loop = asyncio.get_running_loop()
    listeners: list[Listener] = []
    async with Clients(server) as clients:
        alice = await clients.join(room, "alice")
        allowed = await clients.join(room, "allowed")
        denied = await clients.join(room, "denied")
        sender, publication = await publish_tone(alice)
        try:
            for sub in (allowed, denied):
                await wait_track_subscribed(sub, publication.sid)
                listeners.append(Listener(sub, publication.sid))
            ears = dict(zip(("allowed", "denied"), listeners))
            t0 = loop.time()
            await wait_until(
                lambda: all(l.hears(t0) for l in listeners),
                timeout=SUBSCRIBE_TIMEOUT,
                what="both subscribers to hear the tone while everyone is allowed",
            )

            # Only "allowed" may have alice's tracks.
            set_permissions(alice, False, "allowed")
            t1 = loop.time()
            try:
                await wait_until(
                    lambda: ears["denied"].silent(t1),
                    timeout=SUBSCRIBE_TIMEOUT,
                    what="the tone to stop at the subscriber no longer allowed",
                )
            except AssertionError as e:
                raise AssertionError(f"{e}: {ears['denied'].describe(t1)}") from None
            # The positive control: the allowed one still hears it, now.
            t2 = loop.time()
            await wait_until(
                lambda: ears["allowed"].hears(t2),
                timeout=SUBSCRIBE_TIMEOUT,
                what="the allowed subscriber to keep hearing the tone",
            )

            # Nobody is allowed: the allowed one stops too.
            set_permissions(alice, False)
            t3 = loop.time()
            await wait_until(
                lambda: ears["allowed"].silent(t3),
                timeout=SUBSCRIBE_TIMEOUT,
                what="the tone to stop once no one is allowed",
            )

            # Everyone again: both hear it again.
            set_permissions(alice, True)
            t4 = loop.time()
            try:
                await wait_until(
                    lambda: all(l.hears(t4) for l in listeners),
                    timeout=SUBSCRIBE_TIMEOUT + 10,
                    interval=0.1,
                    what="both subscribers to hear the tone again once everyone is allowed",
                )
            except AssertionError as e:
                raise AssertionError(
                    f"{e}: " + " | ".join(f"{k}: {v.describe(t4)}" for k, v in ears.items())
                ) from None
            sender.check()
            assert publication.sid in denied.room.remote_participants["alice"].track_publications, (
                "the track stays published for those not allowed"
            )
        finally:
            await sender.stop()
            for l in listeners:
                await l.close()
