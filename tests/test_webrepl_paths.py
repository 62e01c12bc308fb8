"""BoardFiles on a WebREPL link chooses its file path by measurement, on the emulated WebREPL
without the ESP8266's 20 ms chunk pause (where the binary file protocol can win)."""
from __future__ import annotations

import os

import pytest

from edgekernel.device import BoardSession
from edgekernel.device.files import BoardFiles, _path_costs, _predict
from edgekernel.emulator import start_board

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def session():
    board = start_board("unix", webrepl=0, webrepl_password="pw1234")
    try:
        with BoardSession.open(board.webrepl, link_options={"password": "pw1234"}) as s:
            yield s
    finally:
        board.stop()
    assert not board.alive


def test_the_faster_measured_path_is_used_and_named(session) -> None:
    files = BoardFiles(session)
    data = os.urandom(60_000)
    files.put(data, "a.bin")
    assert files.last_path.name == "repl" and "next time" in files.last_path.reason
    model = _path_costs[session]["put"]
    assert set(model) == {"repl", "webrepl"}
    for _ in range(2):
        files.put(data, "a.bin")
        predicted = _predict(_path_costs[session]["put"], len(data))
        assert files.last_path.name == min(predicted, key=predicted.get)
        assert "measured; predicted" in files.last_path.reason
        assert files.get("a.bin") == data
    predicted = _predict(_path_costs[session]["get"], len(data))
    assert files.last_path.name == min(predicted, key=predicted.get)

def test_forced_paths_agree_byte_for_byte(session) -> None:
    data = bytes(range(256)) * 100 + b"\x03\x04\x1b"
    BoardFiles(session, mode="webrepl").put(data, "w.bin")
    assert BoardFiles(session, mode="stream").get("w.bin") == data
    BoardFiles(session, mode="stream").put(data[::-1], "s.bin")
    assert BoardFiles(session, mode="webrepl").get("s.bin") == data[::-1]
    # append cannot use the file protocol: the REPL path does it, and says why
    files = BoardFiles(session, mode="webrepl")
    files.put(b"more", "s.bin", append=True)
    assert files.last_path.name == "repl" and "append" in files.last_path.reason
    assert BoardFiles(session).get("s.bin") == data[::-1] + b"more"
