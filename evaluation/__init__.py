"""Offline (in-process) evaluation harness: data format, metrics, baselines, protocols A/B/C.

See ``docs/evaluation.md`` for what is measured and ``docs/data-format.md`` for the data
format; ``python -m evaluation.cli --help`` runs it.
"""
