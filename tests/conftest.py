"""Fixtures for the fast tests: scripted fake boards and the real unix-port
MicroPython on a pseudo-terminal (no emulator package needed)."""
from __future__ import annotations

import pytest

from edgekernel.device import BoardSession

from fakepeer import FakeBoard, PtyLink, micropython_executable
from kernel_fixtures import MICROPYTHON_MISSING, MOSQUITTO_MISSING, alive


@pytest.fixture
def make_board():
    """make_board(**FakeBoard options, connect=True, session options...) -> (board, session)."""
    made: list[tuple[FakeBoard, BoardSession]] = []

    def make(*, connect: bool = True, connect_timeout: float = 2.0, framed_limit: int = 4096, **options):
        board = FakeBoard(**options)
        session = BoardSession(board, framed_limit=framed_limit)
        made.append((board, session))
        if connect:
            session.connect(connect_timeout)
        return board, session

    yield make
    for board, session in made:
        board.stop()
        session.close()


@pytest.fixture
def unix_session():
    """A connected session with the real unix-port micropython behind a pty."""
    if micropython_executable() is None:
        pytest.skip(MICROPYTHON_MISSING)
    link = PtyLink()
    session = BoardSession(link)
    try:
        session.connect(10)
        yield session
    finally:
        session.close()
        link.close()
        assert link.proc.poll() is not None, f"micropython pid {link.proc.pid} still running"


@pytest.fixture
def mosquitto():
    """A mosquitto broker on 127.0.0.1 (random port, set_tcp_nodelay), stopped by PID afterwards."""
    from edgekernel.mqtt.broker import mosquitto_path, start_mosquitto
    if mosquitto_path() is None:
        pytest.skip(MOSQUITTO_MISSING)
    broker = start_mosquitto()
    try:
        yield broker
    finally:
        broker.stop()
        assert not alive(broker.pid), f"mosquitto pid {broker.pid} still running"


@pytest.fixture
def amqtt_broker():
    """amqtt's broker in a thread of the test process on 127.0.0.1 (random port)."""
    from edgekernel.mqtt.broker import start_amqtt
    broker = start_amqtt()
    try:
        yield broker
    finally:
        broker.stop()
