"""The Faust/aiokafka workarounds run only on the versions they were checked against."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from streams.patches import PINNED


@pytest.mark.parametrize("dist", sorted(PINNED))
def test_installed_version_is_the_one_the_patches_were_written_for(dist: str) -> None:
    assert version(dist) == PINNED[dist], (
        f"{dist} {version(dist)} is installed but streams/patches was checked on "
        f"{PINNED[dist]}: read each module there against the new source, then move the pin"
    )
