"""The raw REPL engine (edgekernel.device.session) against a scripted fake board,
state by state, and against the real unix-port MicroPython where one state is
not enough."""
from __future__ import annotations

import threading
import time

import pytest

from edgekernel.device import BoardBusy, BoardNotResponding, BoardSession, CodeTooLarge, LinkClosed
from edgekernel.device import onboard
from edgekernel.device import session as session_mod
from fakepeer import FRIENDLY_BANNER, RAW_BANNER, FakeBoard, Reply, mp_traceback
from hang_guard import returns

# -- entering the raw REPL --------------------------------------------------------------------


def test_connect_through_boot_chatter(make_board):
    chatter = (b"\x00\xff ets Jan  8 2013,rst cause:2, boot mode:(3,6)\r\n\x8a\x12garbage"
               b"\r\nload 0x40100000\r\n" + FRIENDLY_BANNER)
    board, session = make_board(boot=chatter)
    assert board.mode == "raw"
    assert session.exec("print(40 + 2)").text == "42\n"
    assert session.raw_paste is True        # the helper (> 240 bytes) went through raw-paste
    assert session.free_ram == 60000


def test_connect_interrupts_a_chatty_main_py(make_board):
    # main.py prints every 10 ms until Ctrl-C: the banner must still be found by suffix.
    board, session = make_board(mode="busy")
    assert board.mode == "raw"
    assert session.exec("print('x')").text == "x\n"


def test_connect_with_late_ctrl_c_reply(make_board):
    # The micro:bit answers Ctrl-C ~250 ms late; the answer lands after the drain.
    # The late ">>> " must not be mistaken for a hung board (no reset to get a prompt).
    board, session = make_board(ctrl_c_delay=0.25)
    assert board.mode == "raw" and board.soft_resets == 0
    assert session.exec("print(1)").text == "1\n"
    assert board.soft_resets == 0


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 13])
def test_banner_and_everything_split_across_reads(make_board, chunk):
    board, session = make_board(chunk=chunk)
    r = session.exec("print('split')\n'v' * 3", show_value=True)
    assert (r.text, r.value, r.error) == ("split\n", "'vvv'", None)
    r = session.exec("1/0")
    assert r.error.type == "ZeroDivisionError" and r.error.frames[-1].line == 1


def test_native_reply_split_after_its_second_eof(make_board):
    # The helper install (and every internal run) answers "\x04\x04>". When a
    # read ends between the second \x04 and the ">", the session must still
    # take the first \x04 as the end of stdout. chunk=2 makes the board's
    # replies arrive two bytes per read: "\x04\x04" then ">".
    board, session = make_board(connect=False, chunk=2)
    session.connect(3)
    assert session.exec("print(7)").text == "7\n"


def test_connect_from_friendly_prompt_with_half_typed_line(make_board):
    board, session = make_board(connect=False)
    board.line += b"import machine; machine.res"   # someone typed, never pressed enter
    session.connect(5)
    assert board.mode == "raw"
    session.exec("print(2)")
    assert all(b"machine" not in p for _, p in board.programs)


def test_connect_from_paste_mode(make_board):
    board, session = make_board(mode="paste-mode")
    assert board.mode == "raw"
    assert session.exec("print(3)").text == "3\n"


def test_connect_when_already_raw_with_stale_line(make_board):
    board, session = make_board(mode="raw", connect=False)
    board.line += b"stale junk"
    session.connect(5)
    session.exec("print(4)")
    assert all(b"stale" not in p for _, p in board.programs)


def test_connect_never_soft_resets(make_board):
    board, session = make_board(boot=FRIENDLY_BANNER)
    session.exec("print(5)")
    assert board.soft_resets == 0


def test_silent_board_gives_clear_error_within_deadline(make_board):
    board, session = make_board(mode="dead", connect=False)
    # The connect's own 1 s deadline ends it: the specific error, long before the hang guard.
    with pytest.raises(BoardNotResponding, match="could not enter the raw REPL.*check the port and baud rate"):
        returns(lambda: session.connect(1.0), what="connect to a silent board")


def test_board_that_goes_silent_before_acknowledging(make_board):
    board, session = make_board()
    board.mode = "dead"
    with pytest.raises(BoardNotResponding, match="no acknowledgement of the code from the board"):
        returns(lambda: session.exec("print(1)", timeout=1.0), what="exec on a board that went silent")


# -- raw-paste ------------------------------------------------------------------------------------

BIG_CELL = "\n".join(f"x{i} = {i}  # some padding to make the line longer" for i in range(120)) + "\nprint(x119)"


@pytest.mark.parametrize("window,credit_delay", [(128, 0.0), (32, 0.002), (16, 0.003), (256, 0.005)])
def test_raw_paste_never_exceeds_credit(make_board, window, credit_delay):
    board, session = make_board(window=window, credit_delay=credit_delay)
    r = session.exec(BIG_CELL)
    assert r.text == "119\n"
    how, program = board.programs[-1]
    assert how == "paste" and len(program) > 2000
    assert board.max_overrun <= 0, f"host sent {board.max_overrun} bytes beyond its raw-paste credit"
    assert board.cells[-1] == BIG_CELL


def test_raw_paste_credit_when_board_grants_slowly(make_board):
    # Each window is granted 30 ms after it was consumed: the host must wait, not overrun.
    board, session = make_board(window=64, credit_delay=0.01)
    assert session.exec(BIG_CELL).text == "119\n"
    # Waiting shows as never running ahead of the grants, over an upload of many windows.
    how, program = board.programs[-1]
    assert how == "paste" and len(program) // 64 > 20
    assert board.max_overrun <= 0
    assert board.cells[-1] == BIG_CELL


@pytest.mark.parametrize("reply", ["no", "old"])
def test_raw_paste_refused_is_remembered(make_board, reply):
    board, session = make_board(raw_paste=reply)
    assert session.raw_paste is False
    assert board.raw_paste_requests == 1
    assert board.mode == "raw"
    for _ in range(2):
        assert session.exec(BIG_CELL).text == "119\n"
    assert board.raw_paste_requests == 1, "asked for raw-paste again after the board refused it"
    assert board.cells[-1] == BIG_CELL
    assert [how for how, _ in board.programs].count("paste") == 0


def test_paced_fallback_chunks_and_pauses(make_board):
    # A board that reads no faster than a 115200-baud wire delivers, with the micro:bit's 64-byte
    # buffer: it loses bytes unless the host pauses between chunks (a burst overflows it at once).
    board, session = make_board(raw_paste="no", rx_buffer=64, rx_rate=session_mod.PACED_RATE)
    start = len(board.write_log)
    assert session.exec(BIG_CELL).text == "119\n"
    assert board.rx_dropped == 0, f"{board.rx_dropped} bytes dropped: the host sent faster than the paced rate"
    assert board.cells[-1] == BIG_CELL
    writes = board.write_log[start:]
    # A big cell goes in two programs: setting the marker (_ek.m=...), then the cell itself.
    ends = [i for i, (_, w) in enumerate(writes) if w == b"\x04"]
    assert len(ends) == 2, "more than the two programs and their Ctrl-Ds went out"
    assert b"".join(w for _, w in writes[: ends[0]]).startswith(b"_ek.m=")
    program = writes[ends[0] + 1: ends[1]]
    assert len(program) >= 10
    assert max(len(w) for _, w in program) <= session_mod.PACED_CHUNK


def test_paced_fallback_fits_a_64_byte_receive_buffer(make_board):
    # The micro:bit (MicroPython 1.9.2, no raw-paste) keeps UART input in a
    # 64-byte ring buffer and drops what does not fit. Fed faster than its
    # firmware reads (QEMU; a USB bridge delivering whole packets), 256-byte
    # pieces lose bytes: a SyntaxError, silently different data, or a lost \x04.
    board, session = make_board(raw_paste="old", rx_buffer=64, rx_rate=20000)
    assert board.rx_dropped == 0     # the helper went through intact
    text = "".join(chr(0x41 + i % 26) for i in range(600))
    board.cell = lambda src: Reply(out=[f"{len(src)}\r\n".encode()])
    src = f"t = '{text}'\nprint(len(t))"
    r = session.exec(src, timeout=5)
    assert board.rx_dropped == 0, f"{board.rx_dropped} bytes dropped by the board's receive buffer"
    assert board.cells[-1] == src


def test_paced_fallback_caps_code_size_to_ram(make_board):
    board, session = make_board(raw_paste="no", mem_free=8000)
    with pytest.raises(CodeTooLarge, match="without raw-paste"):
        session.exec("x = 1\n" * 1000)
    # The session is still in step with the board.
    assert session.exec("print('after')").text == "after\n"


def test_board_aborts_mid_raw_paste(make_board):
    # A program too big for the helper streams as-is; the board finds a syntax
    # error while compiling and sends \x04: the host must acknowledge and stop.
    board, session = make_board(framed_limit=100, window=64)
    board.abort_after = 200
    r = session.exec("x = 1\n" * 2000)
    assert r.error is not None and r.error.type == "SyntaxError"
    assert board.bytes_after_abort <= 2 * 64, f"host kept sending {board.bytes_after_abort} bytes after the abort"
    board.abort_after = None
    assert session.exec("print('clean')").text == "clean\n"


def test_raw_paste_answer_later_than_one_second(make_board):
    # A slow link (a gateway, WebREPL) may take over a second to answer \x05A\x01.
    board, session = make_board(connect=False, paste_reply_delay=1.2)
    session.connect(10)
    assert session.raw_paste is True


def test_raw_paste_window_bytes_split_across_reads(make_board):
    board, session = make_board(chunk=1, window=32)
    assert session.exec(BIG_CELL).text == "119\n"
    assert board.max_overrun <= 0


# -- framing of the answer ------------------------------------------------------------------------

TRICKY = [
    b"a\x04b\r\n",
    b"\x04",
    b">",
    b"OK",
    b"\x04\x04>",
    RAW_BANNER,
    b"\x04Traceback (most recent call last):\r\n",
    b"\xff\xfe\xc3(\r\n",
    b"\x1eABCDEFGHD",            # looks like a marker, is not ours
    b"\x1e",
    b"soft reboot\r\n",
    b"end\r\n",
]


@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_output_that_looks_like_framing_is_output(make_board, chunk):
    board, session = make_board(chunk=chunk, cell=lambda src: Reply(out=list(TRICKY)))
    got: list[bytes] = []
    r = session.exec("tricky()", on_output=got.append)
    assert r.output == b"".join(TRICKY)
    assert b"".join(got) == r.output
    assert r.ok and r.reset is None
    board.cell = lambda src: Reply(out=[b"clean\r\n"])
    r2 = session.exec("print('clean')")
    assert r2.output == b"clean\r\n" and r2.ok


def test_marker_split_at_every_position(make_board):
    board, session = make_board()
    for cut in range(0, 12):
        def cell(src, cut=cut):
            # Output, then the framing split by hand at `cut` bytes into the marker.
            m = board.marker.encode()
            return Reply(out=[b"out", (m + b"R'v'" + m + b"D\x04\x04>")[:cut], 0.01,
                              (m + b"R'v'" + m + b"D\x04\x04>")[cut:]], end="raw-written")
        board.cell = cell
        board._finish = _finish_verbatim(board)
        r = session.exec("v", show_value=True, timeout=5)
        assert (r.output, r.value) == (b"out", "'v'"), cut


def _finish_verbatim(board):
    def finish(reply, framed):
        board.emit_pieces(reply.out)
    return finish


def test_pause_after_output_that_looks_like_the_native_end(make_board):
    # Inside the helper the only end is the marker: a program that prints
    # "\x04\x04>" and keeps running for a while must not be cut short.
    board, session = make_board(cell=lambda src: Reply(out=[b"before", b"\x04\x04>", 0.2, b"after\r\n"]))
    r = session.exec("go()")
    assert r.output == b"before\x04\x04>after\r\n"
    board.cell = lambda src: Reply(out=[b"1\r\n"])
    assert session.exec("print(1)").text == "1\n"


def test_pause_after_output_that_looks_like_a_reset(make_board):
    # A reset is believed only after a sign, a prompt and silence: a program
    # that prints all three and then goes on must not be reported as reset.
    fake = b"MPY: soft reboot\r\n" + RAW_BANNER
    board, session = make_board(cell=lambda src: Reply(out=[fake, 0.2, b"still running\r\n"]))
    r = session.exec("go()")
    assert r.reset is None and r.output == fake + b"still running\r\n"


def test_native_end_when_helper_not_used(make_board):
    # Cells above framed_limit stream as-is: a raised exception ends with the
    # raw REPL's own "\x04 traceback \x04>".
    board, session = make_board(framed_limit=100)
    src = "a = 1\n" * 50 + "print('x\\x04y')\n" + "b = 2\n" * 3 + "1/0\n"
    r = session.exec(src, filename="big.py")
    assert r.output == b"x\x04y\r\n"
    assert r.error.type == "ZeroDivisionError"
    assert r.error.frames[-1].file == "big.py" and r.error.frames[-1].line == 55
    assert board.programs[-1][0] == "paste"
    # Without an exception the helper's done marker ends it.
    r = session.exec("a = 1\n" * 50 + "print('fine')\n")
    assert r.ok and r.text == "fine\n"


def test_native_end_split_across_reads(make_board):
    board, session = make_board(framed_limit=100, chunk=1)
    r = session.exec("a = 1\n" * 30 + "print('o\\x04k')\n1/0\n")
    assert r.output == b"o\x04k\r\n" and r.error.type == "ZeroDivisionError"
    assert session.exec("print(2)").text == "2\n"


def test_helper_missing_is_reinstalled_and_cell_runs_once(make_board):
    board, session = make_board()
    board.helpers = False          # reset behind our back (e.g. the reset button while idle)
    r = session.exec("print('once')")
    assert r.ok and r.text == "once\n"
    assert board.cells.count("print('once')") == 1


def test_value_error_and_output_together(make_board):
    board, session = make_board(cell=lambda src: Reply(out=[b"o1\r\n", b"o2\r\n"], value="[1, 2]",
                                                       error=mp_traceback("ValueError", "bad\nsecond line")))
    r = session.exec("x", show_value=True)
    assert r.text == "o1\no2\n" and r.value == "[1, 2]"
    assert r.error.type == "ValueError" and r.error.message == "bad\nsecond line"


def test_output_streams_before_the_end(make_board):
    pieces = []
    for i in range(20):
        pieces += [f"line {i}\r\n".encode(), 0.01]
    board, session = make_board(cell=lambda src: Reply(out=pieces))
    # Each callback notes whether the board still had output on its way (not yet read by
    # the host): streaming means the first piece reached the user before the reply ended.
    seen: list[tuple[bool, bytes]] = []
    r = session.exec("loop()", on_output=lambda d: seen.append((bool(board._incoming), d)))
    assert len(seen) >= 10
    assert seen[0][0], "output arrived in one piece at the end"
    assert b"".join(d for _, d in seen) == r.output


# -- resets ---------------------------------------------------------------------------------------


def test_soft_reboot_mid_exec_is_detected(make_board):
    board, session = make_board(cell=lambda src: Reply(out=[b"working\r\n", 0.02], end="soft-reset"))
    r = session.exec("work()")
    assert r.reset == "soft" and not r.ok and r.output.startswith(b"working")
    board.cell = lambda src: Reply(out=[b"ok\r\n"])
    r = session.exec("print('ok')")
    assert r.ok and r.text == "ok\n"


def test_hard_reset_mid_exec_is_detected(make_board):
    board, session = make_board(cell=lambda src: Reply(out=[b"working\r\n", 0.02], end="hard-reset"))
    r = session.exec("work()")
    assert r.reset == "hard"
    board.cell = lambda src: Reply(out=[b"ok\r\n"])
    assert session.exec("print('ok')").text == "ok\n"
    assert board.mode == "raw"


def test_sys_exit_soft_reset_after_done_marker(make_board):
    board, session = make_board(cell=lambda src: Reply(out=[b"bye\r\n"], end="sys-exit"))
    r = session.exec("import sys; sys.exit()")
    assert r.reset == "soft" and r.output == b"bye\r\n"
    board.cell = lambda src: Reply(out=[b"back\r\n"])
    assert session.exec("print('back')").text == "back\n"


def test_reboot_text_without_prompt_is_not_a_reset(make_board):
    board, session = make_board(cell=lambda src: Reply(out=[b"soft reboot\r\n", b"Type \"help()\" for more information.\r\n"]))
    r = session.exec("print_it()")
    assert r.reset is None and r.ok


def test_soft_reset_on_request(make_board):
    board, session = make_board()
    session.soft_reset()
    assert board.soft_resets == 1 and board.helpers is True
    assert session.exec("print(6)").text == "6\n"


# -- interrupts -----------------------------------------------------------------------------------


def _interrupt_soon(session: BoardSession, after: float = 0.1) -> threading.Thread:
    def go() -> None:
        while not session.running:
            time.sleep(0.005)
        time.sleep(after)
        session.interrupt()
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_interrupt_busy_loop(make_board):
    board, session = make_board(cell=lambda src: Reply(end="busy"))
    _interrupt_soon(session)
    r = session.exec("while True: pass")
    assert r.interrupted is not None and r.interrupted.step == "ctrl-c"
    assert r.error.type == "KeyboardInterrupt"
    board.cell = lambda src: Reply(out=[b"usable\r\n"])
    assert session.exec("print('usable')").text == "usable\n"


def test_interrupt_print_flood(make_board):
    board, session = make_board(cell=lambda src: Reply(end="busy", chatter=b"flood " * 20 + b"\r\n", chatter_period=0.001))
    _interrupt_soon(session, 0.2)
    r = session.exec("while True: print('flood')")
    assert r.interrupted.step == "ctrl-c" and len(r.output) > 1000
    assert r.error.type == "KeyboardInterrupt"
    board.cell = lambda src: Reply(out=[b"usable\r\n"])
    assert session.exec("print('usable')").text == "usable\n"


def test_interrupt_ladder_second_ctrl_c(make_board):
    # A program that swallows the first KeyboardInterrupt.
    board, session = make_board(cell=lambda src: Reply(end="busy", ignore_ctrl_c=1))
    _interrupt_soon(session)
    r = session.exec("stubborn()")
    assert r.interrupted.step == "ctrl-c x2"   # not the first Ctrl-C, and no reset
    assert r.error.type == "KeyboardInterrupt" and r.reset is None
    assert board.soft_resets == 0
    board.cell = lambda src: Reply(out=[b"usable\r\n"])
    assert session.exec("print('usable')").text == "usable\n"


def test_exec_timeout_interrupts(make_board):
    board, session = make_board(cell=lambda src: Reply(end="busy"))
    r = session.exec("while True: pass", timeout=0.3)
    assert r.timed_out and r.interrupted is not None
    # The time limit stops the code like a user would: the first Ctrl-C, the board kept.
    assert r.interrupted.step == "ctrl-c" and r.error.type == "KeyboardInterrupt" and r.reset is None
    board.cell = lambda src: Reply(out=[b"usable\r\n"])
    assert session.exec("print('usable')").text == "usable\n"


@pytest.mark.parametrize("raw_paste", ["yes", "no"])
@pytest.mark.parametrize("then", ["connect", "soft_reset"])
def test_helper_install_after_an_interrupted_exec(make_board, raw_paste, then):
    # An interrupt belongs to the exec it stopped: installing the helper later
    # (connect, soft reset) must not find it and abandon the upload.
    board, session = make_board(raw_paste=raw_paste, cell=lambda src: Reply(end="busy"))
    _interrupt_soon(session, 0.05)
    assert session.exec("while True: pass").interrupted is not None
    before = (len(board.programs), len(board.written))
    if then == "connect":
        session.connect(1.5)
    else:
        session.soft_reset(1.5)
    # The helper went up once, whole: no abandoned upload and no second try after one.
    helper = onboard.HELPER_SOURCE.encode()
    assert bytes(board.written[before[1]:]).count(helper[:64]) == 1
    assert [p for _, p in board.programs[before[0]:] if p == helper] == [helper]
    assert all(how != "paste-aborted" for how, _ in board.programs[before[0]:])
    board.cell = lambda src: Reply(out=[b"usable\r\n"])
    assert session.exec("print('usable')").text == "usable\n"


def test_interrupt_when_idle_does_nothing(make_board):
    board, session = make_board()
    n = len(board.written)
    session.interrupt()
    assert len(board.written) == n


def test_exec_while_busy_raises_board_busy(make_board):
    board, session = make_board(cell=lambda src: Reply(end="busy"))
    t = _interrupt_soon(session, 0.3)
    worker = threading.Thread(target=session.exec, args=("while True: pass",), daemon=True)
    worker.start()
    while not session.running:
        time.sleep(0.005)
    with pytest.raises(BoardBusy):
        session.exec("print(1)")
    worker.join(5)
    t.join(5)


def _fragments_run(board: FakeBoard, since: int, source: str) -> list[bytes]:
    """Programs the board ran since `since` that are pieces of `source`, not all of it."""
    whole = {source.encode(), (source + session_mod.onboard.STREAM_TRAILER).encode()}
    return [p for _, p in board.programs[since:]
            if not p.startswith(b"_ek.") and p not in whole and b"gc.mem_free" not in p]


def test_interrupt_during_raw_paste_upload(make_board):
    # Ctrl-C while the board reads a raw-paste upload: the board answers \x04,
    # raises KeyboardInterrupt and goes straight back to its raw prompt: unlike
    # a syntax-error abort it does not wait for a \x04 from the host. Whatever
    # the host sends after its Ctrl-C (data still within its credit, then the
    # \x04 "acknowledgement") lands at that prompt: the tail of the program is
    # compiled and run, or, with nothing before it, the \x04 soft-resets the board.
    board, session = make_board(window=32, credit_delay=0.005)
    since = len(board.programs)
    _interrupt_soon(session, 0.1)
    r = session.exec(BIG_CELL, timeout=10)
    assert r.interrupted is not None and r.error.type == "KeyboardInterrupt", r
    assert board.soft_resets == 0, "interrupting an upload soft-reset the board"
    assert not _fragments_run(board, since, BIG_CELL), "the board ran a fragment of the cell"
    assert r.reset is None and b"OK" not in r.output
    board.cell = lambda src: Reply(out=[b"usable\r\n"])
    assert session.exec("print('usable')").text == "usable\n"


def test_interrupt_during_paced_upload(make_board):
    # Without raw-paste, Ctrl-C at the raw prompt only clears the line received
    # so far; if the host keeps sending, the rest of the program runs on its own.
    board, session = make_board(raw_paste="no")
    big = "\n".join(f"print('line {i} padding padding padding padding')" for i in range(80))
    since = len(board.programs)
    _interrupt_soon(session, 0.05)
    r = session.exec(big, timeout=10)
    assert r.interrupted is not None
    assert not _fragments_run(board, since, big), "the board ran a fragment of the cell"
    board.cell = lambda src: Reply(out=[b"usable\r\n"])
    assert session.exec("print('usable')").text == "usable\n"


def test_hard_reset_while_idle_next_exec_recovers(make_board):
    # The reset button pressed between two cells: the board comes back in the
    # friendly REPL with a boot banner waiting in the buffer.
    board, session = make_board()
    board.mode, board.helpers = "friendly", False
    board.emit(b"\r\nets Jan  8 2013,rst cause:2\r\n" + FRIENDLY_BANNER)
    time.sleep(0.05)
    r = session.exec("print('after reset')")
    assert r.text == "after reset\n"
    assert board.soft_resets == 0


# -- the link going away ------------------------------------------------------------------------


def test_link_closed_mid_exec(make_board):
    board, session = make_board(cell=lambda src: Reply(out=[b"partial\r\n"], end="busy"))
    board.hang_up(delay=0.2)
    # No time limit on the exec: only noticing the hang-up can end it.
    with pytest.raises(LinkClosed, match="the board disconnected"):
        returns(lambda: session.exec("while True: pass"), what="exec on a port that vanished")


def test_link_closed_at_connect(make_board):
    board, session = make_board(connect=False)
    board.hang_up()
    with pytest.raises(LinkClosed):
        session.connect(2)


def test_closed_session_refuses_exec(make_board):
    board, session = make_board()
    session.close()
    assert board.written.endswith(b"\r\x02")     # left in the friendly REPL
    with pytest.raises(LinkClosed, match="closed"):
        session.exec("print(1)")


# -- with the real unix-port MicroPython -----------------------------------------------------------


def test_unix_exec_value_and_errors(unix_session):
    s = unix_session
    assert s.exec("print('hi')").text == "hi\n"
    assert s.exec("x = 6\nx * 7", show_value=True).value == "42"
    r = s.exec("a = 1\n\ndef f():\n    return 1/0\nf()")
    assert r.error.type == "ZeroDivisionError"
    assert [(f.file, f.line) for f in r.error.frames] == [("<cell>", 5), ("<cell>", 4)]
    r = s.exec("x = (\n")
    assert r.error.type == "SyntaxError"
    assert s.eval("[1, 'a', b'b', {'k': None}]") == [1, "a", b"b", {"k": None}]


def test_unix_tricky_output_and_next_exec(unix_session):
    s = unix_session
    r = s.exec("import sys\nsys.stdout.write('a\\x04b>OK\\x04\\x04>raw REPL; CTRL-B to exit\\r\\n>')\n"
               "sys.stdout.buffer.write(b'\\xff\\xfe')\nprint()")
    assert r.output == b"a\x04b>OK\x04\x04>raw REPL; CTRL-B to exit\r\n>\xff\xfe\n"
    assert r.ok
    assert s.exec("print('next')").output == b"next\n"


def test_unix_big_cell_through_raw_paste_and_fallback(unix_session):
    s = unix_session
    src = "".join(f"v{i} = {i}\n" for i in range(800)) + "print(v799)"
    assert len(src) > s.framed_limit
    assert s.exec(src).text == "799\n" and s.raw_paste is True
    s.raw_paste = False
    r = s.exec(src)
    assert r.text == "799\n"
    r = s.exec(src + "\n1/0")
    assert r.error.type == "ZeroDivisionError" and r.error.frames[-1].line == 802


def test_unix_input_with_and_without_answer(unix_session):
    s = unix_session
    prompts = []
    r = s.exec("n = input('name? ')\nprint('hello', n)", on_input=lambda p: prompts.append(p) or "Ada")
    assert prompts == ["name? "] and r.text.endswith("hello Ada\n") and r.ok
    r = s.exec("input('x')")
    assert r.error is not None and "stdin" in r.error.message
    assert s.exec("print('still fine')").text == "still fine\n"


# -- a framed call the board cannot even compile -----------------------------------------------------

def test_unix_a_framed_call_damaged_outside_its_literal_is_sent_again(unix_session, monkeypatch):
    """Bytes lost outside the cell's literal make the call itself a SyntaxError at the raw REPL (the
    helper's length check never runs): the session must take that as damage and send the cell again,
    not wait for a helper marker that never comes."""
    s = unix_session
    real = onboard.framed_call
    calls = []

    def losing_the_last_byte_once(*args, **kwargs):
        program = real(*args, **kwargs)
        calls.append(program)
        return program[:-1] if len(calls) == 1 else program

    monkeypatch.setattr(onboard, "framed_call", losing_the_last_byte_once)
    r = s.exec("print(6 * 7)", timeout=30)
    assert r.ok and r.text == "42\n" and not r.timed_out and r.interrupted is None, r
    assert len(calls) == 2


@pytest.mark.skipif(__import__("shutil").which("qemu-system-arm") is None,
                    reason="qemu-system-arm not installed (apt-get install qemu-system-arm)")
def test_microbit_a_cell_too_big_to_compile_says_so_at_once():
    """The micro:bit's raw REPL answers a program it has no memory to parse with a bare MemoryError
    line: that is the end of the run (a one-line error saying what to do), not output to wait after."""
    from edgekernel.emulator import start_board
    from kernel_fixtures import alive
    proc = start_board("microbit", baud=115200, timeout=30)
    try:
        with BoardSession.open(proc.port, 115200, timeout=20) as s:
            r = s.exec("x = '" + "a" * 2800 + "'\nprint(len(x))", timeout=60)
            assert r.error is not None and r.error.type == "MemoryError", r
            assert "make the cell smaller" in r.error.message and not r.timed_out and r.interrupted is None
            assert s.exec("print(1 + 1)", timeout=15).text == "2\n"
    finally:
        proc.stop()
    assert not alive(proc.pid), f"micro:bit emulator pid {proc.pid} still running"
