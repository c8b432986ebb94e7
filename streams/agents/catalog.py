"""Agent for `catalog`: batches of messages -> :meth:`Pipeline.on_catalog`."""

from __future__ import annotations

import faust

from streams import runtime
from streams.agents import consume
from streams.app import app, catalog_topic, metrics, settings
from streams.pipeline import Pipeline
from streams.topics import CATALOG


@app.agent(catalog_topic)
async def process_catalog(stream: faust.StreamT[bytes]) -> None:
    await consume(
        stream,
        CATALOG.name,
        Pipeline.on_catalog,
        runtime.pipeline,
        metrics,
        settings.batch_max,
        settings.batch_within_s,
    )
