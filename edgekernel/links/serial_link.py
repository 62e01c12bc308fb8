"""Serial links: a device path or any pyserial URL (socket://, rfc2217://, loop://).

Opening and closing are done so that NodeMCU-style ESP boards are *not* reset:
their auto-reset circuit resets the chip when exactly one of DTR/RTS is
asserted, so both are kept equal whenever the port changes state.
"""
from __future__ import annotations

import errno
import grp
import os
import select
import stat
import time

import serial

from typing import Any

from .base import Link, LinkClosed, LinkError, SecretSource

DEFAULT_BAUD = 115200


def _holder_of(path: str) -> str | None:
    """Best effort: name the process that has `path` open (for a busy-port error)."""
    try:
        target = os.path.realpath(path)
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            fd_dir = f"/proc/{pid}/fd"
            try:
                for fd in os.listdir(fd_dir):
                    if os.path.realpath(os.path.join(fd_dir, fd)) == target:
                        with open(f"/proc/{pid}/comm") as f:
                            return f"{f.read().strip()} (pid {pid})"
            except OSError:
                continue
    except OSError:
        pass
    return None


def _is_pty(path: str) -> bool:
    try:
        major = os.major(os.stat(path).st_rdev)
    except OSError:
        return False
    return 136 <= major <= 143  # Unix98 pty slaves


NOT_SERIAL_HINT = "pass the board's serial port (e.g. /dev/ttyUSB0): 'edgekernel devices' lists them"


def not_a_serial_device(port: str) -> LinkError | None:
    """The error for a path that exists but cannot be a serial port (a file, a directory), else None."""
    try:
        mode = os.stat(port).st_mode
    except OSError:
        return None  # missing or unreadable: opening it says which
    if stat.S_ISCHR(mode):
        return None
    what = "a directory" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else "not a device"
    return LinkError(f"{port} is {what}, not a serial device: {NOT_SERIAL_HINT}")


def _open_error(port: str, exc: Exception) -> LinkError:
    """Turn pyserial's open failure into one line that says what to do."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOTTY or "Inappropriate ioctl" in text:  # a character device that is no tty (/dev/null)
        return LinkError(f"{port} is not a serial device: {NOT_SERIAL_HINT}")
    if code == errno.ENOENT or "No such file" in text:
        return LinkError(f"no such port {port}: check the cable and run 'edgekernel devices' to list ports")
    if code == errno.EACCES or "Permission denied" in text:
        try:
            group = grp.getgrgid(os.stat(port).st_gid).gr_name
        except (OSError, KeyError):
            group = "dialout"
        return LinkError(
            f"permission denied on {port}: join the '{group}' group "
            f"(sudo usermod -aG {group} $USER, then log in again)")
    if code == errno.EBUSY or "exclusively lock" in text or "busy" in text.lower():
        holder = _holder_of(port)
        who = f" by {holder}" if holder else ""
        return LinkError(f"port {port} is in use{who}: close the other program (or its kernel) and try again")
    return LinkError(f"cannot open {port}: {text}")


class SerialLink(Link):
    """A board on a serial port or pyserial URL."""

    kind = "serial"

    @classmethod
    def from_url(cls, url: str, *, baudrate: int = DEFAULT_BAUD, secret: SecretSource | None = None,
                 **options: Any) -> "SerialLink":
        return cls(url, baudrate, **options)

    @property
    def baudrate(self) -> int | None:
        return self._ser.baudrate

    @property
    def connection_summary(self) -> str:
        return f"at {self._ser.baudrate} baud"

    def __init__(self, port: str, baudrate: int = DEFAULT_BAUD, *, esp_reset_lines: bool = True,
                 write_timeout: float = 10.0) -> None:
        super().__init__()
        self.description = port
        self._is_url = "://" in port
        # esp_reset_lines: the board's DTR/RTS drive EN/GPIO0 (NodeMCU wiring), so
        # the link can hard-reset it and must not glitch those lines. URLs and
        # pseudo-terminals (emulated boards) have no modem lines.
        self._esp_reset_lines = esp_reset_lines and not self._is_url and not _is_pty(port)
        if not self._is_url and (error := not_a_serial_device(port)) is not None:
            raise error
        try:
            ser = serial.serial_for_url(port, do_not_open=True)
            ser.baudrate = baudrate
            ser.write_timeout = write_timeout
            if not self._is_url:
                ser.exclusive = True
            # Both asserted = "run" on NodeMCU auto-reset wiring; Linux asserts both on open anyway.
            ser.dtr = True
            ser.rts = True
            ser.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise _open_error(port, exc) from None
        self._ser = ser
        try:
            self._fd: int | None = ser.fileno()
        except Exception:  # URL handlers (socket://, loop://) may not expose one
            self._fd = None
        self._timeout: float | None = -1.0

    def read(self, max_bytes: int, timeout: float | None) -> bytes:
        ser = self._ser
        try:
            if self._fd is not None:
                # One select and one read: pyserial's read() adds ioctls and a second select.
                ready, _, _ = select.select([self._fd], [], [], timeout)
                if not ready:
                    return b""
                data = os.read(self._fd, max_bytes)
                if not data:
                    raise LinkClosed(f"{self.description}: the board disconnected")
                return data
            if timeout != self._timeout:
                ser.timeout = timeout
                self._timeout = timeout
            first = ser.read(1)
            if not first:
                return b""
            return first + ser.read(min(ser.in_waiting, max_bytes - 1))
        except LinkClosed:
            raise
        except (serial.SerialException, OSError) as exc:
            raise LinkClosed(f"{self.description}: the board disconnected ({exc})") from None

    def _write(self, data: bytes) -> None:
        try:
            self._ser.write(data)
        except serial.SerialTimeoutException:
            raise LinkError(f"{self.description}: write timed out; the board is not reading (is it wedged? try a hard reset)") from None
        except (serial.SerialException, OSError) as exc:
            raise LinkClosed(f"{self.description}: the board disconnected ({exc})") from None

    @property
    def can_hard_reset(self) -> bool:
        return self._esp_reset_lines

    def hard_reset(self) -> None:
        """Pulse EN through RTS with GPIO0 (DTR) released: esptool's run-mode reset."""
        if not self.can_hard_reset:
            super().hard_reset()
        ser = self._ser
        try:
            ser.dtr = False
            ser.rts = True   # EN low: chip held in reset
            time.sleep(0.1)
            ser.rts = False  # EN high, GPIO0 high: normal boot
            time.sleep(0.05)
            ser.dtr = True   # back to both asserted ("run") for the rest of the session
            ser.rts = True
        except (serial.SerialException, OSError) as exc:
            if getattr(exc, "errno", None) in (errno.ENOTTY, errno.EINVAL):
                raise LinkError(f"{self.description}: this port has no DTR/RTS lines; press the board's reset button") from None
            raise LinkClosed(f"{self.description}: the board disconnected ({exc})") from None

    def close(self) -> None:
        ser = self._ser
        if not ser.is_open:
            return
        try:
            # Drop RTS before DTR: the order esptool and mpremote use so that the
            # auto-reset circuit never sees "only DTR" (which selects the bootloader).
            if self._esp_reset_lines:
                ser.rts = False
                ser.dtr = False
        except (serial.SerialException, OSError):
            pass  # ptys and vanished ports have no modem lines
        try:
            ser.close()
        except (serial.SerialException, OSError):
            pass
