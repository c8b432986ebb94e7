"""``streams.transport``: the worker's Kafka consumer gets the configured fetch wait."""

from __future__ import annotations

import faust

from streams.transport import App, Transport


async def test_the_worker_consumer_waits_at_most_the_configured_fetch_wait() -> None:
    app = App("test-fetch-wait", broker="kafka://localhost:9", fetch_max_wait_ms=20)
    assert isinstance(app.transport, Transport)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    # What it replaces: Faust's driver fixes 1,500 ms.
    plain = faust.App("test-fetch-wait-plain", broker="kafka://localhost:9")
    fixed = plain.consumer._thread._create_worker_consumer(plain.transport)
    try:
        assert consumer._fetch_max_wait_ms == 20
        assert fixed._fetch_max_wait_ms == 1500
    finally:
        await consumer.stop()  # never started: this only closes its client
        await fixed.stop()
        for a in (app, plain):  # the consumer threads' loops (never run)
            a.consumer._thread.thread_loop.close()


async def test_the_app_settings_reach_the_transport() -> None:
    from streams.app import app, settings

    assert isinstance(app.transport, Transport)
    assert app.fetch_max_wait_ms == settings.fetch_max_wait_ms
