"""Free ports never include the ones Ray takes by default."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from deploy import ports


def test_free_port_skips_the_ports_ray_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    handed = iter([52365, 8265, 40123])  # what bind(0) returns, in turn

    class FakeSocket:
        def __init__(self, *args: Any) -> None:
            self.port = next(handed)

        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            assert address == ("127.0.0.1", 0)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(ports.socket, "socket", FakeSocket)
    assert ports.free_port() == 40123


def test_free_port_is_bindable() -> None:
    port = ports.free_port()
    assert port not in ports.RESERVED
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
