"""Agent for `social`: batches of messages -> :meth:`Pipeline.on_social`."""

from __future__ import annotations

import faust

from streams import runtime
from streams.agents import consume
from streams.app import app, metrics, settings, social_topic
from streams.pipeline import Pipeline
from streams.topics import SOCIAL


@app.agent(social_topic)
async def process_social(stream: faust.StreamT[bytes]) -> None:
    await consume(
        stream,
        SOCIAL.name,
        Pipeline.on_social,
        runtime.pipeline,
        metrics,
        settings.batch_max,
        settings.batch_within_s,
        settings.batch_within_max_s,
        settings.batch_max_users,
    )
