"""WebREPL-only cases, on the unix board behind the emulated WebREPL in its board-faithful mode:
login failures, one client at a time, pings, frame sizes, the file protocol and its failures,
dropped connections, and reconnecting after resets."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import websocket

from edgekernel.device import BoardSession
from edgekernel.device.files import BoardFiles, FileTransferError
from edgekernel.device.webrepl_files import WebReplFiles
from edgekernel.links import LinkClosed
from edgekernel.links.webrepl_link import WebReplError, WebReplLink

pytestmark = pytest.mark.parametrize("target", ["webrepl"], indirect=True)


def _raw_client(url: str) -> websocket.WebSocket:
    ws = websocket.WebSocket(skip_utf8_validation=True)
    ws.connect(url, timeout=10)
    return ws


def _login(ws: websocket.WebSocket, password: str) -> bytes:
    assert ws.recv_data() == (1, b"Password: ")
    ws.send(password.encode() + b"\r", websocket.ABNF.OPCODE_TEXT)
    return ws.recv_data()[1]


def _usable(session: BoardSession) -> None:
    r = session.exec("print(6 * 7)", timeout=15)
    assert r.ok and r.text.strip() == "42", r


def test_wrong_password_is_one_clear_line_and_the_board_stays_usable(target, board) -> None:
    board.close()   # one client at a time: make room
    with pytest.raises(WebReplError) as info:
        WebReplLink(target.port, "wrong-pw")
    message = str(info.value)
    assert "wrong WebREPL password" in message and "\n" not in message and "wrong-pw" not in message
    # The exact strings the board sends
    ws = _raw_client(target.port)
    assert _login(ws, "nope") == b"\r\nAccess denied\r\n"
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv_data()
    # Passwords longer than the board's 9 characters never match: said before connecting.
    with pytest.raises(WebReplError, match="at most 9 characters"):
        WebReplLink(target.port, "0123456789")
    with BoardSession.open(target.port, link_options=target.link_options) as s:
        _usable(s)


def test_cli_wrong_password_never_shows_it(target, board) -> None:
    board.close()
    env = dict(os.environ, WEBREPL_PASSWORD="not-it9")
    r = subprocess.run([sys.executable, "-m", "edgekernel", "exec", "--port", target.port, "print(1)"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2
    assert "wrong WebREPL password" in r.stderr and "not-it9" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1


def test_second_client_gets_a_clear_error_and_the_first_goes_on(target, board) -> None:
    with pytest.raises(WebReplError, match="another client is connected"):
        WebReplLink(target.port, target.link_options["password"])
    _usable(board)


def test_login_text_then_friendly_or_raw_state_left_by_an_earlier_client(target, board) -> None:
    board.close()
    # A client that leaves the REPL in raw mode and vanishes without a word.
    ws = _raw_client(target.port)
    assert _login(ws, target.link_options["password"]) == b"\r\nWebREPL connected\r\n>>> "
    ws.send(b"\r\x03\x03\x01", websocket.ABNF.OPCODE_TEXT)
    seen = b""
    while not seen.endswith(b"raw REPL; CTRL-B to exit\r\n>"):
        seen += ws.recv_data()[1]
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.sock.close()   # a TCP reset: no close frame
    time.sleep(0.2)
    with BoardSession.open(target.port, link_options=target.link_options) as s:
        r = s.exec("1 + 2", show_value=True, timeout=15)
        assert r.ok and r.value == "3"


def test_pings_get_no_answer_and_do_not_hurt(target, board) -> None:
    board.close()
    ws = _raw_client(target.port)
    _login(ws, target.link_options["password"])
    ws.ping(b"anyone?")
    ws.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv_data(control_frame=True)
    ws.settimeout(10)
    ws.send(b"6*7\r", websocket.ABNF.OPCODE_TEXT)
    seen = b""
    while b"42" not in seen:
        seen += ws.recv_data()[1]
    ws.close()


def test_frames_of_64k_or_more_are_never_sent(target, board) -> None:
    # The link splits: a 100 KB program arrives intact.
    lines = ["t = 0"] + [f"t += {i}  # " + "x" * 60 for i in range(1400)] + ["print(t)"]
    r = board.exec("\n".join(lines), timeout=60)
    assert r.ok and r.text.strip() == str(sum(range(1400))), r
    board.close()
    # The board drops a connection that sends one (64-bit length), as a real one does.
    ws = _raw_client(target.port)
    _login(ws, target.link_options["password"])
    ws.send(b"#" * 70000, websocket.ABNF.OPCODE_TEXT)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        for _ in range(10):
            ws.recv_data()


def test_file_protocol_byte_for_byte(target, board) -> None:
    wr = WebReplFiles(board)
    assert wr.version() == (1, 29, 0)
    data = bytes(range(256)) * 40 + b"\x00\x03\x04"
    wr.put(data, "wr.bin")
    assert open(os.path.join(target.process.flash_dir, "wr.bin"), "rb").read() == data
    assert wr.get("wr.bin") == data
    wr.put(b"", "empty.bin")
    assert wr.get("empty.bin") == b""
    # BoardFiles verifies whichever path it takes, and says which
    files = BoardFiles(board, mode="webrepl")
    files.put(data, "wr2.bin")
    assert files.get("wr2.bin") == data and files.last_path.name == "webrepl"


def test_failed_open_drops_the_connection_and_the_session_reconnects(target, board) -> None:
    files = BoardFiles(board, mode="webrepl")
    with pytest.raises(FileTransferError) as info:
        files.put(b"abc" * 100, "no/such/dir/f.bin")
    assert "dropped the WebREPL connection" in str(info.value) and "reconnected" in str(info.value)
    with pytest.raises(FileTransferError, match="dropped the WebREPL connection.*reconnected"):
        files.get("no-such-file.bin")
    _usable(board)


def test_connection_dropped_mid_transfer(target, board) -> None:
    """The board resets while a put streams in (20 ms per 512 bytes: 100 KB takes ~4 s)."""
    data = os.urandom(100_000)
    progress = []

    def press_reset() -> None:
        while len(progress) < 10:
            time.sleep(0.01)
        target.process.hard_reset()

    threading.Thread(target=press_reset, daemon=True).start()
    with pytest.raises(FileTransferError) as info:
        BoardFiles(board, mode="webrepl").put(data, "big.bin", progress=lambda d, t: progress.append(d))
    message = str(info.value)
    assert "mid-transfer" in message and "\n" not in message
    _usable(board)


def test_soft_reset_and_sys_exit_reconnect(target, board) -> None:
    before = board.link.reconnects
    board.exec("kept = 1", timeout=15)
    board.soft_reset(timeout=20)
    assert board.link.reconnects == before + 1
    r = board.exec("print('kept' in globals())", timeout=15)
    assert r.ok and r.text.strip() == "False"
    r = board.exec("import sys\nsys.exit()", timeout=20)
    assert r.reset == "soft" and board.link.reconnects == before + 2
    _usable(board)


def test_plain_http_gets_a_page(target) -> None:
    host, port = target.port.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        page = b""
        while chunk := s.recv(4096):
            page += chunk
    assert page.startswith(b"HTTP/1.0 200 OK") and b"WebREPL" in page


def test_auto_path_is_chosen_by_measurement_and_said(target, board) -> None:
    files = BoardFiles(board)
    data = os.urandom(20_000)
    files.put(data, "auto.bin")
    first = str(files.last_path)
    assert "measured 20,000 bytes" in first and "next time: REPL" in first, first
    files.put(data, "auto.bin")
    second = files.last_path
    assert "measured; predicted for 20,000 bytes" in second.reason
    assert files.get("auto.bin") == data and "next time" in str(files.last_path)
    assert files.get("auto.bin") == data
    # In the board-faithful emulator the REPL stream beats 20 ms per 256-byte chunk by far.
    assert second.name == "repl" and files.last_path.name == "repl"
    assert files.put(b"tiny", "tiny.txt") == 4   # small files never pay for a measurement


def test_the_password_is_in_no_command_line_or_log(target, board) -> None:
    password = target.link_options["password"].encode()
    pids = [target.process.pid] + target.process.board_pids() + [os.getpid()]
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert password not in f.read(), pid
    assert password.decode() not in target.process.log()


def test_board_command_needs_a_password_in_the_environment(target) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WEBREPL_PASSWORD"}
    r = subprocess.run([sys.executable, "-m", "edgekernel", "board", "--webrepl", "0"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "needs a password in $WEBREPL_PASSWORD" in r.stderr


def test_nothing_overflowed_the_boards_input_buffer(target, board) -> None:
    """Runs after the others on the shared board: raw-paste's window kept every byte."""
    src = "\n".join(f"v{i} = {i}" for i in range(800)) + "\nprint(v799)"
    r = board.exec(src, timeout=60)
    assert r.ok and r.text.strip() == "799"
    assert "dropped" not in target.process.log()


def test_reconnect_to_a_board_running_main_py_after_a_reset(target, board) -> None:
    files = BoardFiles(board)
    files.put(b"import time\nwhile True:\n    time.sleep(0.05)\n", "main.py")
    try:
        target.process.hard_reset()   # (a signal: it happens soon, not at once)
        with pytest.raises(LinkClosed):   # boots into the endless main.py; our connection is gone
            for _ in range(60):
                board.link.read(4096, 0.5)
        board.reconnect(timeout=30)   # Ctrl-C stops main.py, as on a board
        _usable(board)
    finally:
        os.remove(os.path.join(target.process.flash_dir, "main.py"))
