"""``streams.patches.transport.flush_producer`` drains the send-soon buffer even when slow."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.transport.producer import ProducerBuffer

from streams.patches.transport import count_sends, flush_producer


class SlowBuffer(ProducerBuffer):
    """Faust's buffer, each record taking 0.15 s to go out (a busy or backed-up producer)."""

    sent: list[Any]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sent = []

    async def _send_pending(self, fut: Any) -> None:
        await asyncio.sleep(0.15)
        self.sent.append(fut)


class Producer:
    def __init__(self, buffer: ProducerBuffer) -> None:
        self.buffer = buffer
        self.buffered_at_flush: list[int] = []

    async def flush(self) -> None:  # Faust's Producer.flush: the buffer, then aiokafka's
        await self.buffer.flush()
        self.buffered_at_flush.append(self.buffer.size)


async def test_the_worker_app_counts_its_producer_sends() -> None:
    # Async: the producer takes the running loop (built outside one, it makes a loop of its
    # own that nothing closes).
    from scenerec.config import Settings
    from streams.worker import create_worker

    assert create_worker(Settings()).app.producer.buffer.sending == 0


async def test_records_that_go_out_slowly_are_all_out_before_the_batch_is_acked() -> None:
    buffer = SlowBuffer()
    buffer.app = faust.App("test-flush")  # what Faust's Producer sets (unthreaded)
    count_sends(buffer)  # what the worker's app does to its producer's buffer
    await buffer.start()
    try:
        for i in range(3):
            buffer.pending.put_nowait(i)
        # Faust's own flush gives up on the first record that takes over 0.1 s.
        await buffer.flush()
        assert buffer.size > 0
        producer = Producer(buffer)
        await flush_producer(producer)
        assert buffer.size == 0
        assert buffer.sent == [0, 1, 2]
        assert producer.buffered_at_flush == [0]
    finally:
        await buffer.stop()
