"""A host folder mounted on the board (%mount DIR): the board's code imports and opens its files live.

Two halves, both here:

* **On the board** (``BOARD_PROGRAM``, run as a scratch program, so no user name is bound): a small VFS
  object mounted at ``/remote`` (``os.mount``), made the current directory. Each file operation it gets
  (stat, ilistdir, open, read, readline, write, seek, close, remove, rename, mkdir, rmdir, statvfs)
  becomes one *board request* (BoardSession.set_request_handler): printed after the helper's marker,
  answered by the host on the board's stdin. Requests run with ``micropython.kbd_intr(-1)``; a raw 0x03
  in an answer is the host's Ctrl-C (answers never hold one), so the board reads the whole answer and
  then raises KeyboardInterrupt: Ctrl-C mid-read leaves nothing unread behind. An answer starts with a
  byte whose top bit is set; other bytes before it (a spare end byte from a paced upload) are skipped.
  Reads and writes go in chunks of at most ``chunk`` bytes, so a file larger than the board's RAM streams.
* **On the host** (``MountFolder``): serves one folder. Paths are relative to it; a path that leaves it
  (``..`` above it, a symlink pointing out of it unless allowed) is refused with EACCES.

A request is one op letter and its arguments (integers little-endian with ``struct``, strings UTF-8, two
paths split by NUL); an answer is a status byte (0, or the errno the board raises) and the op's result.
After a reset (soft or hard) the session runs the program again (BoardSession.set_board_setup) and the
user gets one line saying so. MicroPython 1.9.2 on the micro:bit has no ``os.mount``: it is refused
with a one-line error, as is a board reached through MQTT (its agent has no byte stream to the board's
stdin for the answers).
"""
from __future__ import annotations

import ast
import errno
import os
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DeviceError
from .result import ExecResult
from .session import BoardSession

REQUEST_KIND = "M"
DEFAULT_MOUNT_POINT = "/remote"
BOARD_TIMEOUT_MS = 10_000   # the board gives up on a host that sends nothing for this long
SETUP_KEY = "mount"

# MicroPython's errno numbers (py/mperrno.h: Linux's); the host's may differ (macOS), so by name.
_BOARD_ERRNO = {"EPERM": 1, "ENOENT": 2, "EIO": 5, "EBADF": 9, "EAGAIN": 11, "ENOMEM": 12, "EACCES": 13,
                "EEXIST": 17, "ENODEV": 19, "ENOTDIR": 20, "EISDIR": 21, "EINVAL": 22, "EMFILE": 24,
                "EFBIG": 27, "ENOSPC": 28, "ESPIPE": 29, "EROFS": 30, "ENAMETOOLONG": 36, "ENOTEMPTY": 39,
                "ETIMEDOUT": 110}
EIO = _BOARD_ERRNO["EIO"]

# The board side. One-space indents (it is sent as a literal). Everything it needs is imported before
# os.mount: an import while mounted would look in the mount first (sys.path[0] is the current dir).
BOARD_PROGRAM = """\
import os,sys,io,select,struct,micropython
P={point!r};C={chunk};T={timeout}
class L:
 def __init__(s):
  s.i=sys.stdin.buffer;s.o=sys.stdout.buffer;s.p=select.poll();s.p.register(s.i,select.POLLIN);s.h=bytearray(3)
 def rd(s,m,n):
  k=0
  while k<n:
   if not s.p.poll(T):
    raise OSError(110)
   k+=s.i.readinto(m[k:n])
 def ask(s,d):
  if d.find(b'\\x1b')>=0:
   d=d.replace(b'\\x1b',b'\\x1b[')
  if d.find(b'\\x04')>=0:
   d=d.replace(b'\\x04',b'\\x1bD')
  if d.find(b'\\x1e')>=0:
   d=d.replace(b'\\x1e',b'\\x1b^')
  m=bytes(_ek.m,'ascii');h=s.h;v=memoryview(h);x=0
  micropython.kbd_intr(-1)
  try:
   while x<1:
    x+=1
   x=0
   s.o.write(m+b'QM'+d+m+b'q')
   s.rd(v,1)
   while h[0]<128:
    if h[0]==3:
     x=1
    s.rd(v,1)
   s.rd(v[1:],2)
   n=h[0]&127|(h[1]&127)<<7|(h[2]&127)<<14
   try:
    b=bytearray(n)
   except MemoryError:
    while n:
     k=n if n<3 else 3
     s.rd(v,k);n-=k
    raise
   s.rd(memoryview(b),n)
  finally:
   micropython.kbd_intr(3)
  if x or s.p.poll(0) and s.i.read(1)==b'\\x03':
   raise KeyboardInterrupt
  if not n:
   raise OSError(5,'no host serves '+P+': %umount it, or %mount again')
  k=b.find(b'\\x1b')
  if k<0:
   return b
  o=bytearray();j=0
  while k>=0:
   o+=b[j:k];o.append(b[k+1]-64);j=k+2;k=b.find(b'\\x1b',j)
  o+=b[j:]
  return o
c=L()
def q(d):
 r=c.ask(d)
 if r[0]:
  raise OSError(r[0])
 return r
def u(r,t):
 return str(r,'utf8') if t else bytes(r)
class F(io.IOBase):
 def __init__(s,d,t):
  s.d=d;s.t=t
 def __enter__(s):
  return s
 def __exit__(s,*a):
  s.close()
 def __iter__(s):
  return s
 def __next__(s):
  l=s.readline()
  if not l:
   raise StopIteration
  return l
 def ioctl(s,r,a):
  if r==4:
   s.close()
  elif r==11:
   return C
  elif r!=1:
   return -1
  return 0
 def flush(s):
  pass
 def close(s):
  if s.d is not None:
   d=s.d;s.d=None;q(b'c'+bytes((d,)))
 def g(s,n,t):
  if s.d is None:
   raise OSError(9)
  return q((b't' if t else b'r')+struct.pack('<Bi',s.d,n))[1:]
 def readinto(s,b):
  m=memoryview(b);k=0;n=len(m)
  while k<n:
   r=s.g(min(C,n-k),0)
   if not r:
    break
   m[k:k+len(r)]=r;k+=len(r)
  return k
 def read(s,n=-1):
  if n<0 or n>C and not s.t:
   p=s.tell();e=s.seek(0,2)-p;s.seek(p)
   if n<0 or n>e:
    n=e if e>0 else 0
   o=bytearray(n);k=s.readinto(o)
   return u(o if k==n else o[:k],s.t)
  if n<=C:
   return u(s.g(n,s.t),s.t)
  o=bytearray()
  while len(o)<n:
   r=s.g(min(C,n-len(o)),1)
   if not r:
    break
   o+=r
  return u(o,1)
 def readline(s):
  o=bytearray()
  while 1:
   if s.d is None:
    raise OSError(9)
   r=q(b'L'+struct.pack('<Bi',s.d,C))[1:]
   o+=r
   if not r or r[-1]==10:
    return u(o,s.t)
 def readlines(s):
  return [l for l in s]
 def write(s,b):
  if s.d is None:
   raise OSError(9)
  if isinstance(b,str):
   b=b.encode()
  m=memoryview(b);k=0;n=len(m)
  while k<n:
   k+=struct.unpack_from('<i',q(b'w'+bytes((s.d,))+bytes(m[k:k+C])),1)[0]
  return n
 def seek(s,o,w=0):
  return struct.unpack_from('<q',q(b'k'+struct.pack('<Bqb',s.d,o,w)),1)[0]
 def tell(s):
  return s.seek(0,1)
class V:
 def __init__(s):
  s.c='/'
 def a(s,p):
  if p[:1]!='/':
   p=('' if s.c=='/' else s.c)+'/'+p
  return p.encode()
 def mount(s,r,m):
  pass
 def umount(s):
  pass
 def chdir(s,p):
  p=s.a(p).decode();n=[]
  for e in p.split('/'):
   if e=='..':
    if not n:
     raise OSError(13)
    n.pop()
   elif e and e!='.':
    n.append(e)
  p='/'+'/'.join(n)
  if p!='/' and not s.stat(p)[0]&0x4000:
   raise OSError(20)
  s.c=p
 def getcwd(s):
  return s.c
 def stat(s,p):
  m,z,t=struct.unpack_from('<IqI',q(b's'+s.a(p)),1)
  return (m,0,0,0,0,0,z,t,t,t)
 def statvfs(s,p):
  return struct.unpack_from('<10Q',q(b'v'+s.a(p)),1)
 def ilistdir(s,p):
  p=s.a(p);i=0
  while 1:
   r=q(b'l'+struct.pack('<I',i)+p);j=2
   while j<len(r):
    t,z,k=struct.unpack_from('<BIB',r,j);j+=6
    yield (str(r[j:j+k],'utf8'),0x4000 if t else 0x8000,0,z);j+=k;i+=1
   if not r[1]:
    return
 def open(s,p,m):
  return F(q(b'o'+m.encode()+b'\\0'+s.a(p))[1],'b' not in m)
 def remove(s,p):
  q(b'x'+s.a(p))
 def rename(s,o,n):
  q(b'n'+s.a(o)+b'\\0'+s.a(n))
 def mkdir(s,p):
  q(b'm'+s.a(p))
 def rmdir(s,p):
  q(b'd'+s.a(p))
w=os.getcwd()
if w==P or w.startswith(P+'/'):
 os.chdir('/');w='/'
try:
 os.umount(P)
except OSError:
 pass
os.mount(V(),P)
os.chdir(P)
print('='+repr((w,sys.path)))
"""

# Compiled under its own name where the firmware has compile(), so a traceback through it shows
# "<edgekernel mount>" frames, not lines of the user's cell.
RUNNER = """\
S={source!r}
c=getattr(__import__('builtins'),'compile',None)
exec(c(S,'<edgekernel mount>','exec') if c else S)
"""

# What a board needs for the program above (the micro:bit's 1.9.2 lacks os.mount and stdin/stdout buffers).
PROBE = """\
import sys
r=[]
for m,a in (('os','mount'),('os','umount'),('micropython','kbd_intr'),('select','poll'),('io','IOBase'),('struct','unpack_from')):
 try:
  getattr(__import__(m),a)
 except:
  r.append(m+'.'+a)
for k in ('stdin','stdout'):
 try:
  getattr(sys,k).buffer
 except:
  r.append('sys.'+k+'.buffer')
try:
 v='.'.join([str(x) for x in sys.implementation.version])
except:
 v='?'
print('='+repr((r,v)))
"""

UNMOUNT = """\
import os
w=os.getcwd()
if w=={point!r} or w.startswith({point!r}+'/'):
 try:
  os.chdir({back!r})
 except OSError:
  os.chdir('/')
try:
 os.umount({point!r});print('=1')
except OSError:
 print('=0')
"""


class MountError(DeviceError):
    """The folder cannot be mounted (or unmounted); the message says why and what to do."""


def board_errno(exc: OSError) -> int:
    """The board's number for a host OSError (EIO when the name is not one MicroPython knows)."""
    name = errno.errorcode.get(exc.errno or 0, "")
    return _BOARD_ERRNO.get(name, EIO)


def _refused(what: str) -> OSError:
    return OSError(errno.EACCES, what)


class MountFolder:
    """Serves one host folder to board requests (the handler given to BoardSession.set_request_handler).

    >>> folder = MountFolder("project")
    >>> folder.handle(b"s/main.py")[:1]        # stat: status 0, then mode, size, mtime
    b'\\x00'
    """

    MAX_FILES = 255
    MAX_READ = 1 << 16
    LIST_BATCH = 1024   # bytes of directory entries per answer

    def __init__(self, root: str | os.PathLike[str], *, allow_symlinks_outside: bool = False) -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise MountError(f"{root} is not a folder on this computer: give %mount an existing folder")
        self.allow_symlinks_outside = allow_symlinks_outside
        self.files: dict[int, int] = {}   # the board's file number -> host file descriptor
        self._ops: dict[int, Callable[[bytes], bytes]] = {
            ord("s"): self._stat, ord("l"): self._list, ord("o"): self._open, ord("r"): self._read,
            ord("t"): self._read_text, ord("L"): self._readline, ord("w"): self._write, ord("k"): self._seek,
            ord("c"): self._close, ord("x"): self._remove, ord("n"): self._rename, ord("m"): self._mkdir,
            ord("d"): self._rmdir, ord("v"): self._statvfs}

    # -- the request handler ----------------------------------------------------------------

    def handle(self, request: bytes) -> bytes:
        """One request's answer: status byte 0 and the result, or the errno the board raises."""
        op = self._ops.get(request[0]) if request else None
        if op is None:
            return bytes((_BOARD_ERRNO["EINVAL"],))
        try:
            return b"\0" + op(request[1:])
        except OSError as exc:
            return bytes((board_errno(exc),))
        except (ValueError, struct.error, UnicodeDecodeError, KeyError, IndexError):
            return bytes((_BOARD_ERRNO["EINVAL"],))

    def close(self) -> None:
        """Close every file the board had open (after an unmount or a reset)."""
        for fd in self.files.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.files.clear()

    # -- paths ------------------------------------------------------------------------------------

    def host_path(self, raw: bytes) -> str:
        """The host path for a board path (relative to the folder), or OSError(EACCES) if it leaves it."""
        text = raw.decode("utf-8")
        if "\0" in text:
            raise OSError(errno.EINVAL, "NUL in a path")
        full = os.path.join(self.root, text.lstrip("/"))
        # Resolving symlinks (realpath) also refuses a link that points out; with them allowed only
        # the spelling counts, so `..` above the folder is refused either way.
        resolved = os.path.abspath(full) if self.allow_symlinks_outside else os.path.realpath(full)
        if resolved != self.root and not resolved.startswith(self.root + os.sep):
            raise _refused(f"{text} is outside the mounted folder")
        return full

    def _fd(self, number: int) -> int:
        try:
            return self.files[number]
        except KeyError:
            raise OSError(errno.EBADF, "file not open") from None

    # -- operations ---------------------------------------------------------------------------------

    def _stat(self, args: bytes) -> bytes:
        path = self.host_path(args)
        st = os.stat(path)
        mode = 0x4000 if os.path.isdir(path) else 0x8000
        return struct.pack("<IqI", mode, st.st_size, int(st.st_mtime) & 0xFFFFFFFF)

    def _statvfs(self, args: bytes) -> bytes:
        v = os.statvfs(self.host_path(args))
        return struct.pack("<10Q", v.f_bsize, v.f_frsize, v.f_blocks, v.f_bfree, v.f_bavail, v.f_files,
                           v.f_ffree, v.f_favail, v.f_flag, v.f_namemax)

    def _list(self, args: bytes) -> bytes:
        (start,) = struct.unpack_from("<I", args)
        path = self.host_path(args[4:])
        names = sorted(os.listdir(path))
        out = bytearray()
        i = start
        while i < len(names) and len(out) < self.LIST_BATCH:
            name = names[i].encode("utf-8", "surrogateescape")
            i += 1
            if len(name) > 255:
                continue
            entry = os.path.join(path, names[i - 1])
            is_dir = os.path.isdir(entry)
            try:
                size = 0 if is_dir else min(os.stat(entry).st_size, 0xFFFFFFFF)
            except OSError:
                size = 0   # a dangling symlink: listed, not followed
            out += struct.pack("<BIB", int(is_dir), size, len(name)) + name
        return bytes((int(i < len(names)),)) + bytes(out)

    def _open(self, args: bytes) -> bytes:
        mode, _, raw = args.partition(b"\0")
        flags = _open_flags(mode.decode())
        path = self.host_path(raw)
        if os.path.isdir(path):
            raise OSError(errno.EISDIR, "is a folder")
        if len(self.files) >= self.MAX_FILES:
            raise OSError(errno.EMFILE, "too many open files on the mount")
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0), 0o666)
        number = next(n for n in range(self.MAX_FILES) if n not in self.files)
        self.files[number] = fd
        return bytes((number,))

    def _read(self, args: bytes) -> bytes:
        number, n = struct.unpack("<Bi", args)
        return os.read(self._fd(number), max(0, min(n, self.MAX_READ)))

    def _read_text(self, args: bytes) -> bytes:
        """As _read, but never ending inside a UTF-8 character (the board decodes what it gets)."""
        number, n = struct.unpack("<Bi", args)
        fd = self._fd(number)
        data = os.read(fd, max(1, min(n, self.MAX_READ)))
        missing = _utf8_missing(data)
        while missing:
            more = os.read(fd, missing)
            if not more:
                break
            data += more
            missing = _utf8_missing(data)
        return data

    def _readline(self, args: bytes) -> bytes:
        number, n = struct.unpack("<Bi", args)
        fd = self._fd(number)
        data = os.read(fd, max(1, min(n, self.MAX_READ)))
        end = data.find(b"\n")
        if end >= 0 and end + 1 < len(data):
            os.lseek(fd, end + 1 - len(data), os.SEEK_CUR)
            data = data[: end + 1]
        return data

    def _write(self, args: bytes) -> bytes:
        return struct.pack("<i", os.write(self._fd(args[0]), args[1:]))

    def _seek(self, args: bytes) -> bytes:
        number, offset, whence = struct.unpack("<Bqb", args)
        return struct.pack("<q", os.lseek(self._fd(number), offset, whence))

    def _close(self, args: bytes) -> bytes:
        os.close(self.files.pop(args[0]))
        return b""

    def _remove(self, args: bytes) -> bytes:
        os.remove(self.host_path(args))
        return b""

    def _rename(self, args: bytes) -> bytes:
        old, _, new = args.partition(b"\0")
        os.rename(self.host_path(old), self.host_path(new))
        return b""

    def _mkdir(self, args: bytes) -> bytes:
        os.mkdir(self.host_path(args))
        return b""

    def _rmdir(self, args: bytes) -> bytes:
        os.rmdir(self.host_path(args))
        return b""


def _open_flags(mode: str) -> int:
    kinds = set(mode) - {"b", "t"}
    base = [k for k in kinds if k in "rwax"]
    if len(base) != 1 or kinds - {"r", "w", "a", "x", "+"}:
        raise OSError(errno.EINVAL, f"bad mode {mode!r}")
    plus = "+" in kinds
    access = os.O_RDWR if plus else (os.O_RDONLY if base[0] == "r" else os.O_WRONLY)
    return access | {"r": 0, "w": os.O_CREAT | os.O_TRUNC, "a": os.O_CREAT | os.O_APPEND,
                     "x": os.O_CREAT | os.O_EXCL}[base[0]]


def _utf8_missing(data: bytes) -> int:
    """How many bytes the last, unfinished UTF-8 character of `data` still needs (0 if none)."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 != 0x80:   # a lead byte (or ASCII)
            need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
            return max(0, need - back)
    return 0


# -- a mount on a board -------------------------------------------------------------------------------

@dataclass
class BoardMount:
    """The folder mounted on one board session."""

    session: BoardSession
    folder: MountFolder
    mount_point: str
    previous_cwd: str = "/"
    sys_path: list[str] = field(default_factory=list)
    say: Callable[[str], None] = print

    @property
    def cwd_on_path(self) -> bool:
        """'' (the current directory) is on the board's sys.path, so `import name` finds the mount's files."""
        return "" in self.sys_path or "." in self.sys_path

    def _remounted(self, result: ExecResult) -> None:
        self.folder.close()   # the board's open files went with the reset
        if result.error is not None:
            self.say(f"the board was reset and {self.folder.root} could not be mounted again: "
                     f"{result.error.type}: {result.error.message} (%mount it again)\n")
        else:
            self.say(f"the board was reset: mounted {self.folder.root} at {self.mount_point} again\n")


_mounts: "weakref.WeakKeyDictionary[Any, BoardMount]" = weakref.WeakKeyDictionary()


def chunk_for(free_ram: int | None) -> int:
    """Bytes per read or write request: what the board's heap affords (a read holds ~3 copies)."""
    free = free_ram or 0
    return 8192 if free >= 256_000 else 2048 if free >= 48_000 else 512


def _run(session: BoardSession, code: str, what: str, timeout: float = 30.0) -> Any:
    result = session.exec(code, timeout=timeout, scratch=True)
    if result.reset is not None:
        raise MountError(f"{what}: the board reset ({result.reset} reset) meanwhile; run the magic again")
    if result.error is not None:
        raise MountError(f"{what} failed on the board: {result.error.type}: {result.error.message}".rstrip(": "))
    text = result.output.decode(errors="replace")
    i = text.rfind("\n=")
    line = text[i + 1:] if i >= 0 else text if text.startswith("=") else ""
    try:
        return ast.literal_eval(line[1:].strip())
    except (ValueError, SyntaxError):
        raise MountError(f"{what}: the board did not answer as expected: {text[-80:]!r}") from None


def active_mount(board: Any) -> BoardMount | None:
    """The folder mounted on `board` by this host, if any."""
    return _mounts.get(board)


def mount_folder(board: Any, folder: str | os.PathLike[str], *, mount_point: str = DEFAULT_MOUNT_POINT,
                 allow_symlinks_outside: bool = False, say: Callable[[str], None] = print) -> BoardMount:
    """Mount host `folder` at `mount_point` on the board and make it the board's current directory.

    Replaces an earlier mount of this board. Raises MountError (one line) where it cannot be done.
    """
    if not board.capabilities.byte_stream:
        raise MountError("%mount needs a byte stream to the board (serial or WebREPL): through MQTT the agent "
                         "has no way to send the board's file requests to this computer and their answers "
                         "back; copy files with %sendtofile instead")
    if not mount_point.startswith("/") or mount_point == "/" or "/" in mount_point[1:]:
        raise MountError(f"mount point {mount_point!r}: give a top-level folder such as /remote")
    session: BoardSession = board
    service = MountFolder(folder, allow_symlinks_outside=allow_symlinks_outside)
    old = _mounts.pop(session, None)
    # Answer requests from here on: a mount left on the board (by another kernel) may be asked meanwhile.
    session.set_request_handler(REQUEST_KIND, service.handle)
    try:
        missing, version = _run(session, PROBE, "checking the board for os.mount")
        if missing:
            raise MountError(f"this board's MicroPython ({version}) cannot mount a host folder: it has no "
                             f"{', '.join(missing)}; copy files to it with %sendtofile instead")
        program = RUNNER.format(source=BOARD_PROGRAM.format(point=mount_point, chunk=chunk_for(session.free_ram),
                                                            timeout=BOARD_TIMEOUT_MS))
        previous_cwd, sys_path = _run(session, program, f"mounting {service.root}")
    except BaseException:
        session.set_request_handler(REQUEST_KIND, None if old is None else old.folder.handle)
        if old is not None:
            _mounts[session] = old
        service.close()
        raise
    if old is not None:
        old.folder.close()
        if old.mount_point != mount_point:
            previous_cwd = old.previous_cwd
            try:
                _run(session, UNMOUNT.format(point=old.mount_point, back="/"), "unmounting the earlier mount")
            except DeviceError:
                pass
        else:
            previous_cwd = old.previous_cwd
    mounted = BoardMount(session, service, mount_point, previous_cwd, list(sys_path), say)
    session.set_board_setup(SETUP_KEY, program, after=mounted._remounted)
    _mounts[session] = mounted
    return mounted


def unmount_folder(board: Any) -> BoardMount | None:
    """Remove this host's mount from the board (its current directory goes back to where it was).

    Returns the mount removed, or None if there was none. With none known here, a mount left on the
    board (by another kernel) at /remote is removed all the same.
    """
    mounted = _mounts.pop(board, None)
    if not board.capabilities.byte_stream:
        return mounted
    session: BoardSession = board
    session.set_board_setup(SETUP_KEY, None)
    point = mounted.mount_point if mounted else DEFAULT_MOUNT_POINT
    back = mounted.previous_cwd if mounted else "/"
    try:
        _run(session, UNMOUNT.format(point=point, back=back), f"unmounting {point}")
    finally:
        session.set_request_handler(REQUEST_KIND, None)
        if mounted is not None:
            mounted.folder.close()
    return mounted


def release_mount(board: Any) -> None:
    """Before the connection to `board` closes (%disconnect, a new connection): unmount, best effort,
    so the board is not left with a mount that nobody answers."""
    if board not in _mounts:
        return
    try:
        unmount_folder(board)
    except Exception:
        mounted = _mounts.pop(board, None)
        if mounted is not None:
            mounted.folder.close()
