"""A put never loses the old file: it lands in a temporary file next to the destination and is
renamed over it only once verified. Real unix-port boards: Ctrl-C, a reset and a pulled cable
mid-transfer, and a leftover temporary file from an earlier failure."""
from __future__ import annotations

import os
import random
import threading

import pytest

from edgekernel.device.errors import DeviceError
from edgekernel.device.files import BoardFiles, FileTransferError, temp_name
from edgekernel.device.session import BoardSession
from edgekernel.links import LinkError

from kernel_fixtures import own_unix_board

OLD = b"print('the good old main.py')\n"


def _rand(n: int, seed: int = 3) -> bytes:
    return random.Random(seed).randbytes(n)


def test_temp_name_is_in_the_same_folder():
    assert temp_name("main.py") == ".main.py.ek-tmp"
    assert temp_name("lib/x.py") == "lib/.x.py.ek-tmp"
    assert temp_name("/flash/main.py") == "/flash/.main.py.ek-tmp"


@pytest.fixture
def files(unix_session, tmp_path):
    unix_session.exec(f"import os\nos.chdir({str(tmp_path)!r})")
    (tmp_path / "main.py").write_bytes(OLD)
    return BoardFiles(unix_session)


def test_put_replaces_and_overwrites_a_leftover_temp_file(files, tmp_path):
    (tmp_path / ".main.py.ek-tmp").write_bytes(b"left by a pulled cable" * 1000)
    data = _rand(20_000)
    files.put(data, "main.py")
    assert (tmp_path / "main.py").read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["main.py"]


def test_ctrl_c_mid_put_keeps_the_old_file_and_the_board(files, tmp_path):
    session = files.session
    pressed = threading.Event()

    def progress(done: int, total: int) -> None:
        if done > total // 4 and not pressed.is_set():
            pressed.set()
            threading.Thread(target=session.interrupt).start()   # as the kernel's SIGINT handler does

    with pytest.raises(FileTransferError) as e:
        files.put(_rand(400_000), "main.py", progress=progress)
    msg = str(e.value)
    assert pressed.is_set()
    assert "\n" not in msg and "interrupted" in msg and "main.py on the board is unchanged" in msg
    assert (tmp_path / "main.py").read_bytes() == OLD
    assert sorted(os.listdir(tmp_path)) == ["main.py"]
    # The board is at its raw REPL with the helper: code and transfers work at once.
    assert session.exec("print(6*7)").output.strip() == b"42"
    files.put(b"new", "main.py")
    assert (tmp_path / "main.py").read_bytes() == b"new"


def test_ctrl_c_mid_literal_put(unix_session, tmp_path):
    unix_session.exec(f"import os\nos.chdir({str(tmp_path)!r})")
    (tmp_path / "main.py").write_bytes(OLD)
    files = BoardFiles(unix_session, mode="literal")
    pressed, done_event = threading.Event(), threading.Event()

    def press_until_done() -> None:
        # interrupt() acts only while a program runs; here one runs per chunk.
        while not done_event.wait(0.005):
            unix_session.interrupt()

    def progress(done: int, total: int) -> None:
        if done > total // 4 and not pressed.is_set():
            pressed.set()
            threading.Thread(target=press_until_done).start()

    try:
        with pytest.raises(FileTransferError, match="main.py on the board is unchanged"):
            files.put(_rand(300_000), "main.py", progress=progress)
    finally:
        done_event.set()
    assert (tmp_path / "main.py").read_bytes() == OLD
    assert sorted(os.listdir(tmp_path)) == ["main.py"]
    assert unix_session.exec("print(6*7)").output.strip() == b"42"


@pytest.fixture
def board(tmp_path):
    with own_unix_board(tmp_path) as b:
        yield b


def test_reset_mid_put_keeps_the_old_file(board):
    with open(os.path.join(board.flash_dir, "main.py"), "wb") as f:
        f.write(OLD)
    with BoardSession.open(board.port) as session:
        files = BoardFiles(session)
        pressed = threading.Event()

        def progress(done: int, total: int) -> None:
            if done > total // 4 and not pressed.is_set():
                pressed.set()
                board.hard_reset()

        with pytest.raises((FileTransferError, DeviceError)):
            files.put(_rand(400_000), "main.py", progress=progress)
        assert pressed.is_set()
        with open(os.path.join(board.flash_dir, "main.py"), "rb") as f:
            assert f.read() == OLD
        # The next put works and leaves no temporary file, whatever the reset left.
        assert session.exec("print(6*7)").output.strip() == b"42"
        files.put(b"new", "main.py")
    with open(os.path.join(board.flash_dir, "main.py"), "rb") as f:
        assert f.read() == b"new"
    assert ".main.py.ek-tmp" not in os.listdir(board.flash_dir)


def test_pulled_cable_mid_put_keeps_the_old_file(board):
    with open(os.path.join(board.flash_dir, "main.py"), "wb") as f:
        f.write(OLD)
    with BoardSession.open(board.port) as session:
        files = BoardFiles(session)
        pulled = threading.Event()

        def progress(done: int, total: int) -> None:
            if done > total // 4 and not pulled.is_set():
                pulled.set()
                board.kill()

        with pytest.raises((FileTransferError, DeviceError, LinkError, OSError)):
            files.put(_rand(400_000), "main.py", progress=progress)
        assert pulled.is_set()
    with open(os.path.join(board.flash_dir, "main.py"), "rb") as f:
        assert f.read() == OLD


@pytest.fixture
def fast_board(tmp_path):
    """An emulated unix board behind a 921600-baud link: the host has data in flight at any moment."""
    with own_unix_board(tmp_path, baud=921600) as b:
        yield b


# A put that does not notice the reset waits for its size-based limit (860 s for 400 KB): far beyond this guard.
RESET_NOTICE_GUARD = 40.0


@pytest.mark.parametrize("seed", [1, 2])
def test_reset_at_seeded_points_of_a_streaming_put_is_noticed_and_named(fast_board, seed):
    """The reset button at several seeded points of a 400 KB put. Data still in flight reaches the
    rebooted board's friendly REPL (which echoes and line-edits it): the put must still end at once
    with a one-line error that names the reset, keep the old file, and leave a board that works."""
    board = fast_board
    main = os.path.join(board.flash_dir, "main.py")
    with open(main, "wb") as f:
        f.write(OLD)
    rng = random.Random(seed)
    with BoardSession.open(board.port) as session:
        files = BoardFiles(session)
        for trial in range(3):
            at, delay = rng.uniform(0.05, 0.9), rng.uniform(0.0, 0.05)
            pressed = threading.Event()

            def progress(done: int, total: int) -> None:
                if done > total * at and not pressed.is_set():
                    pressed.set()
                    threading.Timer(delay, board.hard_reset).start()   # the button, pressed from outside

            outcome: dict[str, BaseException] = {}

            def put() -> None:
                try:
                    files.put(_rand(400_000, seed=trial), "main.py", progress=progress)
                except BaseException as exc:   # noqa: BLE001 - handed to the test thread
                    outcome["error"] = exc

            worker = threading.Thread(target=put, daemon=True)
            worker.start()
            worker.join(RESET_NOTICE_GUARD)
            where = f"trial {trial}: reset at {at:.0%} (+{delay * 1000:.0f} ms)"
            assert not worker.is_alive(), f"{where}: the put did not notice the reset"
            assert pressed.is_set(), where
            error = outcome.get("error")
            assert isinstance(error, FileTransferError), f"{where}: {error!r}"
            msg = str(error)
            assert "\n" not in msg and "reset" in msg and "main.py on the board is unchanged" in msg, f"{where}: {msg}"
            with open(main, "rb") as f:
                assert f.read() == OLD, where
            assert session.exec("print(6*7)", timeout=20).output.strip() == b"42", where
            assert sorted(os.listdir(board.flash_dir)) == ["main.py"], where
