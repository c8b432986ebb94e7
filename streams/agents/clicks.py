"""Agent for `clicks`: batches of messages -> :meth:`Pipeline.on_clicks`."""

from __future__ import annotations

import faust

from streams import runtime
from streams.agents import consume
from streams.app import app, clicks_topic, metrics, settings
from streams.pipeline import Pipeline
from streams.topics import CLICKS


@app.agent(clicks_topic)
async def process_clicks(stream: faust.StreamT[bytes]) -> None:
    await consume(
        stream,
        CLICKS.name,
        Pipeline.on_clicks,
        runtime.pipeline,
        metrics,
        settings.batch_max,
        settings.batch_within_s,
        settings.batch_within_max_s,
        settings.batch_max_users,
    )
