"""A pipeline emitter that keeps what the pipeline sends."""

from __future__ import annotations

from typing import Any

from streams.records import DeadLetter


class Collect:
    def __init__(self) -> None:
        self.recs: list[dict[str, Any]] = []
        self.dlq: list[DeadLetter] = []
        self.dlq_keys: list[str | None] = []
        self.flushes = 0
        self.forgotten: list[str] = []

    async def recommendations(self, user_id: str, payload: dict[str, object]) -> None:
        self.recs.append(payload)

    async def dead_letter(self, key: str | None, letter: DeadLetter) -> None:
        self.dlq.append(letter)
        self.dlq_keys.append(key)

    async def forget(self, user_id: str) -> None:
        self.forgotten.append(user_id)

    async def flush(self) -> None:
        self.flushes += 1
