"""``scenerec forget USER_ID``: erase a user everywhere, through the stream.

A tombstone (the user's key, a null value) goes to the compacted ``users.profiles`` topic.
The worker that owns the user then deletes the user's state (the table writes a tombstone
to its changelog), the user's vectors in the vector store, and publishes a tombstone on the
compacted ``recommendations`` topic, which the pull API follows. Going through the stream
keeps the order with the user's other events and works with any number of workers.

What stays: the raw events the user sent earlier remain in the input topics until their
retention expires (Kafka cannot delete single records from a non-compacted topic), and
aggregate counts (item popularity) keep the clicks as anonymous counts.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.parse
import urllib.request

from scenerec.config import Settings
from scenerec.kafka import producer
from streams.topics import PROFILES


async def publish_tombstone(settings: Settings, user_id: str) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        await prod.send_and_wait(settings.topic(PROFILES.name), key=user_id.encode(), value=None)
    finally:
        await prod.stop()


def worker_knows(settings: Settings, user_id: str) -> bool:
    """True while a worker still holds state for ``user_id`` (routed to the owner)."""
    url = f"{settings.worker_base_url}/users/{urllib.parse.quote(user_id, safe='')}/state"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def forget(settings: Settings, user_id: str, wait_s: float = 30.0) -> bool:
    """Publish the tombstone; wait until the worker no longer knows the user (True)."""
    asyncio.run(publish_tombstone(settings, user_id))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if not worker_knows(settings, user_id):
                return True
        except (urllib.error.URLError, OSError):
            pass  # no worker reachable right now: the tombstone waits in Kafka
        time.sleep(0.5)
    return False
