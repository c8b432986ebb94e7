"""Helpers that unit tests in more than one sub-folder import."""
