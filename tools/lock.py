"""Write the locks from what pyproject.toml declares, at the versions installed now.

    python tools/lock.py            # requirements.lock (runtime), requirements-dev.lock (tests)
    python tools/lock.py --check    # exit 1 if either lock differs from what it would write

The runtime lock is the closure of ``[project] dependencies``: each declared requirement,
then the requirements of what it pulls in (extras followed, environment markers evaluated
for this interpreter), each pinned to the installed version. The dev lock is the closure
of the ``test`` extra less what the runtime lock holds. An installed package that nothing
declared pulls in is in neither: a plain ``pip freeze`` would have kept it.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME, DEV = ROOT / "requirements.lock", ROOT / "requirements-dev.lock"
HEADER = "# Written by `make lock` (tools/lock.py) from pyproject.toml; do not edit.\n"


def closure(requirements: Iterable[str]) -> dict[str, str]:
    """Canonical name -> installed version of every distribution ``requirements`` need."""
    pinned: dict[str, str] = {}
    todo: list[tuple[Requirement, tuple[str, ...]]] = [(Requirement(r), ()) for r in requirements]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": e}) for e in (extras or ("",))
        ):
            continue
        name = canonicalize_name(req.name)
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{req.name} is declared but not installed: run `make install` first")
        pinned[name] = dist.version
        wanted = tuple(sorted(req.extras))
        todo += [(Requirement(r), wanted) for r in dist.requires or ()]
    return pinned


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/lock.py", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only compare with the locks on disk")
    args = p.parse_args(argv)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = closure(project["dependencies"])
    dev = {
        n: v
        for n, v in closure(project["optional-dependencies"]["test"]).items()
        if n not in runtime
    }
    stale = []
    for path, pins in ((RUNTIME, runtime), (DEV, dev)):
        text = render(pins)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path.name}: {len(pins)} packages")
    if stale:
        print(f"out of date: {', '.join(stale)} (run `make lock`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
