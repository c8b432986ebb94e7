"""A Server-Sent Events reader for aiohttp responses (the push bench and the tests use it).

It follows the parsing rules of the HTML standard's EventSource that the feed stream needs:
``field: value`` lines, ``data`` lines joined with newlines, a blank line dispatching the
event, ``:`` comments (heartbeats, yielded as :data:`HEARTBEAT`), ``retry``; the id of the
last event is what a reconnect sends as ``Last-Event-ID``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str
    id: str | None
    #: ``time.time()`` when the blank line that ends the event was read.
    received: float


#: What :func:`read_events` yields for a comment line.
HEARTBEAT = SseEvent("heartbeat", "", None, 0.0)


async def read_events(resp: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """The events of a ``text/event-stream`` response as they arrive, until it ends."""
    event, event_id = "message", None
    data: list[str] = []
    async for raw in resp.content:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data), event_id, time.time())
            event, data = "message", []
            continue
        if line.startswith(":"):
            yield HEARTBEAT
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
