"""Errors of the stream-processing side. One base class, small subclasses."""

from __future__ import annotations


class StreamError(Exception):
    """Base class of every error raised by ``streams``."""


class BadEvent(StreamError):
    """An input event that cannot be applied; it goes to ``events.dlq`` with ``reason``.

    ``reason`` is a short machine-readable code (``not_json``, ``missing_field``,
    ``invalid_field``, ``unknown_kind``, ``text_too_long``, ``unknown_scene``,
    ``unknown_item`` ...); ``str(exc)`` says what exactly is wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
