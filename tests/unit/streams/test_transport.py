"""``streams.patches.transport``: the worker's Kafka consumer gets the configured fetch wait."""

from __future__ import annotations

import faust
from faust.transport.drivers import aiokafka as driver

from streams.patches.transport import App, Transport


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
    from scenerec.config import Settings
    from streams.worker import create_worker

    settings = Settings(fetch_max_wait_ms=35)
    app = create_worker(settings).app
    assert isinstance(app.transport, Transport)
    assert app.fetch_max_wait_ms == settings.fetch_max_wait_ms


def test_a_hole_at_the_front_of_the_acked_offsets_blocks_the_commit() -> None:
    from streams.patches.transport import commit_blocked

    assert commit_blocked([31, 32, 33], 30)  # 30 never handled: Faust would commit 34
    assert commit_blocked([5, 6], 0)  # Faust checks nothing when 0 is committed
    assert not commit_blocked([30, 31, 33], 30)  # 30-31 may be committed, then it stops
    assert not commit_blocked([], 30)
    assert not commit_blocked([7], None)  # nothing committed yet: where it starts is unknown


async def test_only_topics_with_holes_of_their_own_get_gaps() -> None:
    from faust.types import TP

    app = App("test-gaps", broker="kafka://localhost:9", contiguous_topics=frozenset({"clicks"}))
    consumer = app.consumer
    clicks, profiles = TP("clicks", 0), TP("profiles", 0)
    await consumer._add_gap(clicks, 31, 41)  # a seek raced a fetch: records skipped
    await consumer._add_gap(profiles, 31, 41)  # compaction
    assert not consumer._gap[clicks]
    assert consumer._gap[profiles]
    # The commit stops at the first click not handled; Faust's own rule would pass it.
    consumer._committed_offset[clicks] = 30
    consumer._acked[clicks] = [31, 32]
    assert consumer._new_offset(clicks) is None
    assert driver.Consumer._new_offset(consumer, clicks) == 33  # what Faust would commit
    consumer._acked[clicks] = [30, 31, 32]
    assert consumer._new_offset(clicks) == 33
    consumer._committed_offset[profiles] = 30
    consumer._acked[profiles] = [41]
    assert consumer._new_offset(profiles) == 42  # the gap 31-40 counts as handled
    app.consumer._thread.thread_loop.close()


async def test_partitions_faust_does_not_read_are_paused_in_aiokafka() -> None:
    """A changelog partition left out of Faust's reads is not fetched (``mirror_pauses``)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.patches.transport import mirror_pauses

    clicks, changelog = TopicPartition("clicks", 0), TopicPartition("state-changelog", 0)
    consumer = AIOKafkaConsumer(bootstrap_servers="localhost:9")
    consumer.assign([clicks, changelog])
    try:
        mirror_pauses(consumer, {clicks})  # after recovery: the changelog is Faust-paused
        assert consumer.paused() == {changelog}
        mirror_pauses(consumer, {clicks, changelog})  # recovering again: read it
        assert consumer.paused() == set()
        mirror_pauses(consumer, {changelog})  # a stream partition paused by Faust
        assert consumer.paused() == {clicks}
        mirror_pauses(consumer, None)  # a client-only app reads everything: left alone
        assert consumer.paused() == {clicks}
        mirror_pauses(consumer, {TopicPartition("not-assigned", 0), changelog})
        assert consumer.paused() == {clicks}  # only assigned partitions are touched
    finally:
        await consumer.stop()
