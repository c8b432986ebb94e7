"""Free TCP ports for the services a test, bench or replay starts on this host.

A port is picked before the service that uses it binds it, and the Ray head may start in
between. Ray's dashboard agent listens on a fixed port by default (52365,
``ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT``), inside Linux's ephemeral range. In
one ``make test`` run (2026-11-28) the integration fixture picked 52365 for the worker
before it started Ray, and every worker of that module failed to bind it ("address already
in use"). So the ports Ray and Serve take by default are never handed out.
"""

from __future__ import annotations

import socket

#: Ray's default ports (GCS, client server, dashboard, dashboard agent) and Serve's
#: default HTTP and gRPC ports.
RESERVED = frozenset({6379, 8000, 8265, 9000, 10001, 52365})


def free_port() -> int:
    """A TCP port nothing listens on now (on 127.0.0.1), and not one of ``RESERVED``."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED:
            return port
