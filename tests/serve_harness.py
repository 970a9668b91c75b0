"""What the `rfrt serve` tests share: a tiny-model generator factory and a fixture that starts real servers on
ephemeral loopback ports and stops them after the test."""
from __future__ import annotations

import pytest
from rfrt.runtime.generator import StreamGenerator
from rfrt.serve import BackgroundServer, ServeConfig
from test_generator_tiny import one_thread, tiny_model  # noqa: F401  (one_thread: a fixture used below)

PROMPT = "a cat walks on the beach"


def make_tiny() -> StreamGenerator:
    return StreamGenerator(tiny_model(16), device="cpu")


@pytest.fixture
def start_server(one_thread):  # noqa: F811
    """start(make=make_tiny, **ServeConfig fields) -> a started BackgroundServer, stopped at teardown."""
    servers = []

    def start(make=make_tiny, **kw):
        srv = BackgroundServer(make, ServeConfig(port=0, **kw))
        srv.start()
        servers.append(srv)
        return srv
    yield start
    for srv in servers:
        srv.stop()
