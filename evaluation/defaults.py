"""Defaults that the command line (evaluation/cli.py) and the harness share.

A module of plain constants, so that the harness and the protocols need not import the
command line (which imports them back), and ``--help`` loads nothing heavy for them.
"""

from __future__ import annotations

#: Protocol L: valid users the SceneRec tuner scores at most (a seeded sample beyond).
DEFAULT_TUNE_USERS = 6000
#: --quick trains BPR-MF for fewer epochs.
QUICK_BPR_EPOCHS = 5
