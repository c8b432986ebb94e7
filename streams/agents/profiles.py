"""Agent for `profiles`: batches of messages -> :meth:`Pipeline.on_profiles`."""

from __future__ import annotations

import faust

from streams import runtime
from streams.agents import consume
from streams.app import app, metrics, profiles_topic, settings
from streams.pipeline import Pipeline
from streams.topics import PROFILES


@app.agent(profiles_topic)
async def process_profiles(stream: faust.StreamT[bytes]) -> None:
    await consume(
        stream,
        PROFILES.name,
        Pipeline.on_profiles,
        runtime.pipeline,
        metrics,
        settings.batch_max,
        settings.batch_within_s,
        settings.batch_within_max_s,
        settings.batch_max_users,
    )
