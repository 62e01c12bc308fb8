"""Scenarios every board must pass: one suite, run on each target (see conftest.py)."""
from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest

from edgekernel.device import BoardSession, CodeTooLarge, LinkClosed, board_text

# -- helpers ---------------------------------------------------------------------------------


def interrupt_after(session: BoardSession, seconds: float) -> threading.Thread:
    """Call session.interrupt() from another thread once the exec runs."""
    def go() -> None:
        deadline = time.monotonic() + 20
        while not session.running and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(seconds)
        session.interrupt()
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def assert_usable(session: BoardSession) -> None:
    r = session.exec("print(6 * 7)", timeout=15)
    assert r.ok and r.text.strip() == "42", r


def big_script(size: int) -> tuple[str, int]:
    lines = ["total = 0"]
    i = 0
    while sum(len(x) + 1 for x in lines) < size:
        lines.append(f"total += {i}  # padding padding padding padding padding padding")
        i += 1
    lines.append("print('sum', total)")
    return "\n".join(lines) + "\n", sum(range(i))


# -- basic execution ----------------------------------------------------------------------------


def test_exec(board):
    r = board.exec("x = 20\nprint('x is', x)\nx + 22", show_value=True, timeout=15)
    assert r.ok and r.text == "x is 20\n" and r.value == "42"
    assert board.eval("[1, 'two', (3,)]") == [1, "two", (3,)]


def test_output_is_streamed(board):
    # 2000 lines, with a 10 ms pause every 100 so that even a board faster
    # than the host's reads cannot deliver it all at once. Halfway the code asks
    # for input: it cannot go on until the host answers, so whatever reached
    # on_output by then was streamed while the code was still running.
    n = 2000
    pieces: list[bytes] = []
    streamed_at_halfway: list[bytes] = []

    def answer(prompt: str) -> str:
        streamed_at_halfway.append(b"".join(pieces))
        return "go on"

    r = board.exec(f"import time\nfor i in range({n}):\n    print('line', i)\n"
                   "    if i % 100 == 99:\n        time.sleep_ms(10)\n"
                   f"    if i == {n // 2 - 1}:\n        input('halfway ')",
                   on_output=pieces.append, on_input=answer, timeout=120)
    assert r.ok, r.error
    lines = [line for line in r.text.splitlines() if not line.startswith("halfway")]
    assert len(lines) == n and lines[-1] == f"line {n - 1}"
    assert b"".join(pieces) == r.output
    # Streamed: many pieces, and the first half was all there before the second was printed.
    assert len(pieces) >= 20, f"output came in {len(pieces)} pieces"
    assert len(streamed_at_halfway) == 1
    assert f"line {n // 2 - 1}\n" in board_text(streamed_at_halfway[0]), "output was held back until the end"
    assert f"line {n // 2}\n" not in board_text(streamed_at_halfway[0])


@pytest.mark.parametrize("mode", ["raw-paste", "paced"])
def test_50k_script(board, mode):
    t = board.target
    src, expected = big_script(50_000)
    if mode == "raw-paste" and not t.raw_paste:
        pytest.skip(f"{t.name}: the firmware has no raw-paste (MicroPython 1.9.2)")
    if mode == "paced":
        board.raw_paste = False
    if t.ram_small:
        # 16 KB of RAM: a 50 KB source cannot be held for compiling; the session must say so.
        with pytest.raises(CodeTooLarge):
            board.exec(src, timeout=60)
        assert_usable(board)
        pytest.skip(f"{t.name}: 50 KB cannot run in 16 KB of RAM (CodeTooLarge raised as it should)")
    r = board.exec(src, timeout=120)
    assert r.ok, r.error
    assert r.text == f"sum {expected}\n"
    # How fast it went is a benchmark, not a test: bench/device.py ("upload") measures it.
    assert board.raw_paste is (mode == "raw-paste"), "the upload did not use the mode under test"
    assert_usable(board)


def test_cells_without_raw_paste_arrive_intact(board):
    # The fallback for firmware without raw-paste has no flow control: the host
    # must pace its writes to what the board's receive buffer can hold (256 bytes
    # on ESP8266, 64 on the micro:bit), or bytes vanish and the cell turns into a
    # SyntaxError, a wrong result, or (a lost \x04) a board waiting forever.
    board.raw_paste = False
    failures = []
    for k in range(30):
        text = "".join(chr(0x41 + (i * 7 + k) % 26) for i in range(500))
        src = f"t = '{text}'\nprint(len(t), sum(ord(c) for c in t))\nt = None\nimport gc\ngc.collect()"
        expected = f"{len(text)} {sum(map(ord, text))}"
        try:
            if k % 5 == 4:
                board.connect(15)      # re-sends the helper (about 1 KB); the board keeps its own if it is the same version
            r = board.exec(src, timeout=15)
        except Exception as exc:  # noqa: BLE001 - count every way it can go wrong
            failures.append(f"{k}: {type(exc).__name__}: {str(exc)[:200]}")
            board.connect(15)
            continue
        if not (r.ok and r.text.strip() == expected):
            failures.append(f"{k}: {r.error or r.text!r}")
    assert not failures, f"{len(failures)} of 30 cells damaged in transit: {failures[:3]}"


def test_tricky_output_then_clean_exec(board):
    t = board.target
    # Bytes the raw REPL uses for framing, and its banner (the board turns "\n" into "\r\n").
    tricky = "a\\x04b>OK\\x04\\x04>raw REPL; CTRL-B to exit\\n>\\x04\\x04>"
    r = board.exec(f"print('{tricky}')", timeout=15)
    printed = b"a\x04b>OK\x04\x04>raw REPL; CTRL-B to exit\n>\x04\x04>\n"
    assert r.ok and r.output.replace(b"\r\n", b"\n") == printed, r
    if t.name == "microbit":
        invalid = "from microbit import uart\nuart.write(b'\\xff\\xfe\\xc3(')\nprint()"
    else:
        invalid = "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\xc3(')\nprint()"
    r = board.exec(invalid, timeout=15)
    assert r.ok and r.output in (b"\xff\xfe\xc3(\n", b"\xff\xfe\xc3(\r\n"), r
    assert "\ufffd" in r.text
    r = board.exec("print('clean')", timeout=15)
    assert r.ok and r.output in (b"clean\n", b"clean\r\n")


def test_output_like_the_raw_repl_ending_then_a_pause(board):
    # The raw REPL's own "\x04\x04>" ending, printed by a program that keeps running.
    r = board.exec("import time\nprint('\\x04\\x04>', end='')\ntime.sleep(0.3)\nprint('after')", timeout=15)
    assert r.ok and r.text.endswith("after\n"), r
    assert_usable(board)


def test_syntax_error(board):
    r = board.exec("x = 1\nif x\n    print(x)", timeout=15)
    assert r.error is not None and r.error.type == "SyntaxError"
    assert r.output == b""
    assert_usable(board)


def test_runtime_error_with_cell_line_numbers(board):
    r = board.exec("a = 1\n\ndef f(n):\n    return n / 0\n\nprint('before')\nf(a)", timeout=15)
    assert r.text == "before\n"
    e = r.error
    assert e is not None and e.type == "ZeroDivisionError"
    cell = [(f.file, f.line) for f in e.frames]
    assert cell == [("<cell>", 7), ("<cell>", 4)], e.frames
    assert "_ek" not in str(e)
    assert_usable(board)


def test_memory_error(board):
    t = board.target
    size = "20000" if t.ram_small else "1 << 40"
    r = board.exec(f"b = bytearray({size})", timeout=15)
    assert r.error is not None and r.error.type == "MemoryError", r
    assert_usable(board)
    if t.ram_small:
        # The heap is really free again: a sizeable allocation works.
        r = board.exec("import gc\ngc.collect()\nb = bytearray(2000)\nprint(len(b))", timeout=15)
        assert r.ok and r.text.strip() == "2000"


def test_a_cell_that_leaves_the_heap_locked_ends_and_the_next_one_runs(board):
    """micropython.heap_lock() with no heap_unlock(): the friendly REPL unlocks when its prompt returns,
    the raw REPL never does (and then nothing can compile). A cell ends like the prompt: unlocked.
    Before, the helper's own end marker failed to allocate and the cell never ended."""
    r = board.exec("import micropython\nkept = 5\nprint(hasattr(micropython, 'heap_lock'))", timeout=15)
    if r.text.strip() != "True":
        pytest.skip(f"{board.target.name}: this firmware has no micropython.heap_lock")
    r = board.exec("micropython.heap_lock()", timeout=15)
    assert r.ok and not r.timed_out, r
    assert_usable(board)
    # Locked twice, then an allocation fails: the user's MemoryError, from the cell's own line (1.9.2
    # records no traceback for an exception raised while the heap is locked).
    r = board.exec("micropython.heap_lock()\nmicropython.heap_lock()\nx = [1, 2]", timeout=15)
    assert r.error is not None and r.error.type == "MemoryError" and not r.timed_out, r
    lines = [f.line for f in r.error.frames if f.file == "<cell>"]
    assert lines == ([] if board.target.name == "microbit" else [3]), r.error.frames
    assert_usable(board)
    assert board.exec("print(kept)", timeout=15).text.strip() == "5"


def test_a_heap_left_locked_by_a_streamed_cell_is_named(board):
    """A cell too big to frame runs in the raw REPL itself: if it fails with the heap locked, nothing
    unlocks it, and the next cell cannot be compiled. The error says so, and what to do."""
    if board.target.ram_small:
        pytest.skip("a cell too big to frame does not fit a 16 KB heap with room to spare")
    padding = "# " + "x" * 78 + "\n"
    cell = padding * (board.framed_limit // len(padding) + 1) + "import micropython\nmicropython.heap_lock()\nx = [1, 2]\n"
    r = board.exec(cell, timeout=30)
    assert r.error is not None and r.error.type == "MemoryError", r
    r = board.exec("print(6 * 7)", timeout=15)
    assert r.error is not None and r.error.type == "MemoryError", r
    assert "heap is locked" in r.error.message and "soft-reset" in r.error.message, r.error.message
    assert "smaller" not in r.error.message, r.error.message
    board.soft_reset(timeout=20)
    assert_usable(board)


def test_no_heap_lost_per_exec(board):
    # A board runs a notebook's cells for hours: an exec must not cost heap for
    # good (the micro:bit has ~7 KB free).
    probe = "import gc\ngc.collect()\nprint(gc.mem_free())"
    before = int(board.run_internal(probe, timeout=15))
    for _ in range(300):
        r = board.exec("1+1", show_value=True, timeout=15)
        assert r.value == "2", r
    lost = before - int(board.run_internal(probe, timeout=15))
    assert lost <= 256, f"{lost} bytes of heap lost over 300 execs ({lost / 300:.1f} per exec)"


# -- interrupts -------------------------------------------------------------------------------------


def test_interrupt_busy_loop(board):
    assert board.exec("survivor = 'kept'", timeout=15).ok
    interrupt_after(board, 0.3)
    r = board.exec("while True:\n    pass\nprint('finished')", timeout=30)
    assert r.interrupted is not None, r
    # The ladder's first step stopped it (no second Ctrl-C, no reset), and the board kept its state.
    assert r.interrupted.step == "ctrl-c", r.interrupted
    assert r.error is not None and r.error.type == "KeyboardInterrupt"
    assert r.reset is None and not r.timed_out and "finished" not in r.text
    assert board.eval("survivor", timeout=15) == "kept"
    assert_usable(board)


def test_interrupt_print_flood(board):
    # Interrupt once the flood has reached us: a session that held output back until the end
    # would never get there, and the exec would end by its own time limit instead.
    got: list[bytes] = []
    streamed = threading.Event()

    def on_output(data: bytes) -> None:
        got.append(data)
        if sum(map(len, got)) > 2000:
            streamed.set()

    def interrupt_when_streamed() -> None:
        if streamed.wait(60):
            board.interrupt()
    threading.Thread(target=interrupt_when_streamed, daemon=True).start()
    r = board.exec("i = 0\nwhile True:\n    print('flood', i)\n    i += 1", on_output=on_output, timeout=30)
    assert streamed.is_set() and not r.timed_out, r
    assert r.interrupted is not None, r
    assert r.interrupted.step in ("ctrl-c", "ctrl-c x2"), r.interrupted
    assert r.error is not None and r.error.type == "KeyboardInterrupt" and r.reset is None
    assert r.text.startswith("flood 0\n") and b"".join(got) == r.output
    assert_usable(board)


# -- resets -----------------------------------------------------------------------------------------


def test_hard_reset_mid_exec_is_detected(board):
    t = board.target
    t.require_emulated("pressing the reset button")
    def press() -> None:
        while not board.running:
            time.sleep(0.005)
        time.sleep(0.3)
        t.process.hard_reset()
    threading.Thread(target=press, daemon=True).start()
    # The code's natural end (100 s) is beyond the exec's 30 s limit: only noticing the
    # reset can end it as asserted below (an unnoticed reset would end in timed_out instead).
    code = "import time\nfor i in range(1000):\n    print('tick', i)\n    time.sleep(0.1)\nprint('finished')"
    if board.link.can_reopen:
        # WebREPL: the reset takes the connection with it and nothing says it was a reset
        # (a real board just goes silent): the link is reported lost, and connecting again works.
        with pytest.raises(LinkClosed):
            board.exec(code, timeout=30)
        board.reconnect()
        assert_usable(board)
        return
    r = board.exec(code, timeout=30)
    assert r.reset == "hard" and not r.timed_out, r
    assert b"tick 0" in r.output and b"finished" not in r.output
    assert_usable(board)


def test_sys_exit(board):
    t = board.target
    r = board.exec("print('bye')\nimport sys\nsys.exit()", timeout=15)
    assert r.text.startswith("bye")
    if t.soft_reset_on_exit:
        assert r.reset == "soft", r
        # Globals are gone after the soft reset; the helper is back.
        r2 = board.exec("print('x' in globals())", timeout=15)
        assert r2.ok and r2.text.strip() == "False"
    else:
        assert r.reset is None      # MicroPython 1.9.2 does not reset on SystemExit
    assert_usable(board)


def test_soft_reset_on_request(board):
    board.exec("marker_var = 1", timeout=15)
    board.soft_reset(timeout=20)
    r = board.exec("print('marker_var' in globals())", timeout=15)
    assert r.ok and r.text.strip() == "False"


# -- input() ----------------------------------------------------------------------------------------


def test_input_with_answer(board):
    asked = []
    r = board.exec("name = input('name? ')\nprint('hello', name)",
                   on_input=lambda p: asked.append(p) or "Ada Lovelace", timeout=15)
    assert asked == ["name? "]
    assert r.ok and r.text.splitlines()[-1] == "hello Ada Lovelace"


def test_input_without_answer(board):
    r = board.exec("x = input('?')", timeout=15)
    assert r.error is not None and "stdin" in r.error.message, r
    assert_usable(board)


# -- the port going away ----------------------------------------------------------------------------


def test_port_vanishes_mid_exec(board):
    t = board.target
    t.require_emulated("unplugging the board")
    t.damaged = True
    def unplug() -> None:
        while not board.running:
            time.sleep(0.005)
        time.sleep(0.3)
        t.process.kill()
    unplugger = threading.Thread(target=unplug, daemon=True)
    unplugger.start()
    # The code never ends and its 60 s limit would end in an interrupt, not LinkClosed:
    # only noticing the unplugged port gives this error.
    with pytest.raises(LinkClosed) as info:
        board.exec("import time\nwhile True:\n    print('.')\n    time.sleep(0.05)", timeout=60)
    unplugger.join(10)   # kill() has finished before the pool stops the board
    assert "disconnected" in str(info.value) and t.port in str(info.value)


# -- the command line ---------------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekernel", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_exec(target, free_port):
    r = _cli("exec", "--port", free_port, "--baud", str(target.baud), "print('from cli')\n6 * 7")
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r\n", "\n") == "from cli\n42\n"
    r = _cli("exec", "--port", free_port, "--baud", str(target.baud), "x = 1\n1 / 0")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1].startswith("ZeroDivisionError")
    assert '  File "<cell>", line 2, in <module>' in r.stderr


def test_cli_run_streams(target, free_port, tmp_path):
    script = tmp_path / "count.py"
    # The script waits for an answer on stdin after its lines: they must reach us before it can end.
    script.write_text("for i in range(5):\n    print('n', i)\ninput('more? ')\nraise ValueError('at the end')\n")
    with subprocess.Popen([sys.executable, "-m", "edgekernel", "run", "--port", free_port,
                           "--baud", str(target.baud), str(script)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                             daemon=True).start()
            try:
                first = [lines.get(timeout=60) for _ in range(5)]  # 60 s: a hang guard only
            except queue.Empty:
                raise AssertionError("the lines printed before input() did not arrive: output was not streamed")
            proc.stdin.write(b"yes\n")
            proc.stdin.close()
            stderr = proc.stderr.read().decode()
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [line.replace(b"\r\n", b"\n") for line in first] == [b"n %d\n" % i for i in range(5)], (code, stderr)
    assert code == 1, stderr
    assert '  File "count.py", line 4, in <module>' in stderr and "ValueError: at the end" in stderr


def test_mpremote_interop(target, free_port):
    if not target.name.startswith("unix"):
        pytest.skip(f"{target.name}: the interop check runs on the emulated unix board")
    mpremote = shutil.which("mpremote")
    if mpremote is None:
        pytest.skip("mpremote is not installed (pip install mpremote)")
    r = subprocess.run([mpremote, "connect", free_port, "exec", "print(1)"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"
    # And the board is still fine for us afterwards.
    with BoardSession.open(free_port, target.baud, timeout=15) as s:
        assert_usable(s)
