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


def test_pyproject_pins_what_the_patches_were_written_for() -> None:
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pyproject = Path(__file__).resolve().parents[3] / "pyproject.toml"
    declared = {
        canonicalize_name(r.name): str(r.specifier)
        for r in map(Requirement, tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    }
    for dist, pinned in PINNED.items():
        assert declared.get(canonicalize_name(dist)) == f"=={pinned}", (
            f"pyproject.toml must pin {dist}=={pinned}, the version streams/patches was checked on"
        )
