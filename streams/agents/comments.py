"""Agent for `comments`: batches of messages -> :meth:`Pipeline.on_comments`."""

from __future__ import annotations

import faust

from streams import runtime
from streams.agents import consume
from streams.app import app, comments_topic, metrics, settings
from streams.pipeline import Pipeline
from streams.topics import COMMENTS


@app.agent(comments_topic)
async def process_comments(stream: faust.StreamT[bytes]) -> None:
    await consume(
        stream,
        COMMENTS.name,
        Pipeline.on_comments,
        runtime.pipeline,
        metrics,
        settings.batch_max,
        settings.batch_within_s,
        settings.batch_within_max_s,
        settings.batch_max_users,
    )
