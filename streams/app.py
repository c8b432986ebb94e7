"""The worker process's edge: ``faust -A streams.app worker`` reads the attribute ``app``.

The one module that does work when imported: it reads the settings, builds the worker
(streams/worker.py, which imports nothing of this module) and times the garbage
collector's pauses into its metrics. Nothing else imports it.
"""

from __future__ import annotations

from scenerec.config import load_settings
from streams.metrics import watch_gc
from streams.worker import create_worker

worker = create_worker(load_settings())
watch_gc(worker.metrics.gc_pause_seconds)
app = worker.app
