"""The ``microbit`` board: Debian's micro:bit MicroPython firmware (1.9.2) in QEMU.

QEMU's ``-serial pty`` creates a pseudo-terminal for the nRF51's UART. The board process keeps that
pty open itself and relays it through a :class:`~edgekernel.emulator.linksim.SerialLine`, rather than
handing its path to users, because (measured):

* QEMU drops UART output while nobody has its pty open, and so does the link: same behaviour for a
  client, but the relay sees the boot prompt, so readiness can be checked without a client.
* A hard reset restarts QEMU (a power cycle), which makes a new pty; the link's path stays the same.
* The link simulator can sit in front of it.

Nothing else is wrapped: the firmware handles Ctrl-C, soft reset (it prints ``soft reboot``) and its
own receive buffer (blasting 3 KB in raw mode loses bytes in the firmware, as on the real board), so
``rx_buffer`` is refused here. QEMU feeds the emulated UART as fast as the firmware reads it; with no
baud rate given the link is as fast as the emulator.
"""
from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import subprocess
import tty

from . import BoardError, EmulatorNotInstalled, exit_with_parent_preexec

FIRMWARE = "/usr/share/firmware-microbit-micropython/firmware.hex"
QEMU = "qemu-system-arm"
INSTALL = "apt-get install --no-install-recommends qemu-system-arm firmware-microbit-micropython"


def qemu_command(firmware: str = FIRMWARE) -> list[str]:
    """The QEMU command line, or EmulatorNotInstalled saying what to install (Debian/Ubuntu packages)."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise EmulatorNotInstalled(f"the emulated micro:bit needs QEMU ({QEMU} is not on PATH): {INSTALL}")
    if not os.path.isfile(firmware):
        raise EmulatorNotInstalled(f"the emulated micro:bit needs its MicroPython firmware ({firmware} is "
                                   f"missing): {INSTALL}")
    return [qemu, "-M", "microbit", "-device", f"loader,file={firmware}", "-nographic",
            "-serial", "pty", "-monitor", "none"]


class MicrobitBoard:
    """A QEMU micro:bit behind a relay (see the module docstring)."""

    kind = "microbit"
    flash_dir = None

    def __init__(self, *, firmware: str = FIRMWARE, rx_buffer: int | None = None, **_ignored) -> None:
        if rx_buffer is not None:
            raise BoardError("--rx-buffer is not modelled for the micro:bit: its firmware buffers "
                             "(and drops) UART input itself")
        self._cmd = qemu_command(firmware)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink = None
        self._proc: subprocess.Popen | None = None
        self._pidfd = -1
        self._fd = -1  # our end of QEMU's pty (the slave)
        self._reading = False
        self._tx_paused = False
        self._in_q = bytearray()
        self._writing = False
        self._tail = b""
        self._prompt = asyncio.Event()
        self._show_boot = False  # after a hard reset a connected host sees the boot banner
        self._stopping = False
        self.died = asyncio.Event()  # set if QEMU exits on its own (the board process then ends)
        self.death_reason = ""
        self.pts: str | None = None
        self.stats = {"restarts": 0}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def child_pids(self) -> list[int]:
        return [self._proc.pid] if self._proc and self._proc.poll() is None else []

    async def start(self, timeout: float = 20) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._boot(), timeout)
        except asyncio.TimeoutError:
            self._kill()
            raise BoardError(f"the QEMU micro:bit gave no prompt within {timeout:g} s") from None

    async def _boot(self) -> None:
        self._prompt.clear()
        self._proc = subprocess.Popen(self._cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=exit_with_parent_preexec)
        # QEMU prints "char device redirected to /dev/pts/N (label serial0)". Read it without
        # threads: preexec_fn (used for the next QEMU after a reset) is only safe single-threaded.
        qout = self._proc.stdout.fileno()
        os.set_blocking(qout, False)
        out = b""
        while (m := re.search(rb"/dev/pts/\d+", out)) is None:
            readable = self._loop.create_future()
            self._loop.add_reader(qout, lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                self._loop.remove_reader(qout)
            try:
                chunk = os.read(qout, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                raise BoardError(f"qemu exited: {out.decode(errors='replace').strip()}")
            out += chunk
        self.pts = m.group().decode()
        # Keep draining QEMU's own messages so it can never block on them.
        self._loop.add_reader(qout, self._drain_qemu)
        self._fd = os.open(self.pts, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd)
        self._pidfd = os.pidfd_open(self._proc.pid)
        self._loop.add_reader(self._pidfd, self._on_exit)
        self._set_reader()
        # The banner may have gone out before we opened the pty: ask for a prompt until one comes.
        while not self._prompt.is_set():
            try:
                await asyncio.wait_for(self._prompt.wait(), 0.5)
            except asyncio.TimeoutError:
                self._write_raw(b"\r")
        self._show_boot = False
        self._flush_in()

    def _drain_qemu(self) -> None:
        fd = self._proc.stdout.fileno()
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self._loop.remove_reader(fd)

    def set_tx(self, sink) -> None:
        self._sink = sink

    def rx(self, data: bytes) -> None:
        self._in_q += data
        self._flush_in()

    def rx_backlog(self) -> int:
        return len(self._in_q)

    def pause_tx(self) -> None:
        self._tx_paused = True
        self._set_reader()

    def resume_tx(self) -> None:
        self._tx_paused = False
        self._set_reader()

    def hard_reset(self) -> None:
        """Power-cycle: restart QEMU (the link's port stays the same)."""
        if self._stopping or self._loop is None:
            return
        self._kill()
        self._in_q.clear()
        self._show_boot = True
        self.stats["restarts"] += 1
        self._loop.create_task(self._boot()).add_done_callback(self._after_reboot)

    def _after_reboot(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.death_reason = f"reset failed: {task.exception()}"
            self.died.set()

    async def stop(self) -> None:
        self._stopping = True
        self._kill()

    # -- internals ------------------------------------------------------------------------------
    def _kill(self) -> None:
        proc = self._proc
        self._close_fds()
        if proc and proc.poll() is None:
            proc.kill()
        if proc:
            proc.wait()
            if proc.stdout:
                proc.stdout.close()

    def _close_fds(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if self._proc and self._proc.stdout and not self._proc.stdout.closed:
            self._loop.remove_reader(self._proc.stdout.fileno())
        if self._fd >= 0:
            if self._reading:
                self._loop.remove_reader(self._fd)
                self._reading = False
            if self._writing:
                self._loop.remove_writer(self._fd)
                self._writing = False
            os.close(self._fd)
            self._fd = -1

    def _on_exit(self) -> None:
        # QEMU has no reason to exit by itself; if it does, the board is gone: say so and stop.
        code = self._proc.wait()
        self._close_fds()
        if not self._stopping:
            self.death_reason = f"qemu exited unexpectedly (status {code})"
            self.died.set()

    def _set_reader(self) -> None:
        want = self._fd >= 0 and not self._tx_paused
        if want != self._reading:
            self._reading = want
            if want:
                self._loop.add_reader(self._fd, self._on_output)
            else:
                self._loop.remove_reader(self._fd)

    def _on_output(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            return
        if not self._prompt.is_set():
            buf = self._tail + data
            self._tail = buf[-8:]
            if buf.endswith(b">>> "):
                self._prompt.set()
            if not self._show_boot:
                return  # first boot: nobody is connected yet, and our probes are not for anyone
        if self._sink is not None:
            self._sink.tx(data)

    def _write_raw(self, data: bytes) -> None:
        try:
            os.write(self._fd, data)
        except BlockingIOError:
            pass

    def _flush_in(self) -> None:
        if self._fd < 0 or not self._prompt.is_set() or not self._in_q:
            want = False
        else:
            try:
                n = os.write(self._fd, self._in_q)
            except BlockingIOError:
                n = 0
            del self._in_q[:n]
            want = bool(self._in_q)
        if want != self._writing and self._fd >= 0:
            self._writing = want
            if want:
                self._loop.add_writer(self._fd, self._flush_in)
            else:
                self._loop.remove_writer(self._fd)
