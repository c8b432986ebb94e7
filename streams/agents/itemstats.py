"""Agent for `items.deltas`: batches of click deltas -> :meth:`Pipeline.on_item_deltas`.

It gathers longer than the event agents (``SCENEREC_STATS_BATCH_WITHIN_S``): a popular
item's row is then written to the table once per batch, not once per click batch.
"""

from __future__ import annotations

import faust

from streams import runtime
from streams.agents import consume
from streams.app import app, item_deltas_topic, metrics, settings
from streams.pipeline import Pipeline
from streams.topics import ITEM_DELTAS


@app.agent(item_deltas_topic)
async def process_item_deltas(stream: faust.StreamT[bytes]) -> None:
    await consume(
        stream,
        ITEM_DELTAS.name,
        Pipeline.on_item_deltas,
        runtime.pipeline,
        metrics,
        settings.batch_max,
        settings.stats_batch_within_s,
        settings.stats_batch_within_s,
    )
