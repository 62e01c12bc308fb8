"""Install MicroPython packages on a board from the host: what ``mip install`` does, with the
host doing the downloading (the board needs no network).

No Jupyter here: :class:`MipInstaller` takes a :class:`BoardFiles` (any Board) and a ``say``
callback for its one-line-per-file report; the %mip magic and ``edgekernel mip`` are thin.

What a package can be (as mpremote's ``mip install`` accepts):

* ``NAME[@VERSION]`` from a package index in micropython-lib's layout: the package's JSON is at
  ``{index}/package/{MPY}/{NAME}/{VERSION}.json`` (MPY is the board's ``.mpy`` version, e.g. ``6``,
  or ``py`` for source; VERSION ``latest`` by default). It lists ``hashes`` ([board path, first 8 hex
  digits of the file's sha256], the file being at ``{index}/file/{hash[:2]}/{hash}``), ``urls``
  ([board path, URL]) and ``deps`` ([name or URL, version]).
* ``github:ORG/REPO[/PATH][@BRANCH]``, ``gitlab:…``, ``codeberg:…``: rewritten to the host's raw
  file URL (:func:`rewrite_url`); a path ending in ``.py``/``.mpy`` is one file, anything else is
  a folder with a ``package.json``.
* ``http(s)://…/package.json`` (or a folder URL, or one ``.py``/``.mpy`` file).
* A local ``package.json``, a local folder holding one (written as a path: ``./pkg``, ``/x/pkg``;
  a bare name always means the index), or a local ``.py``/``.mpy`` file.

Order of work, so that a network or index failure never leaves a half-installed package: resolve
every package JSON (dependencies too), compare what is on the board (its hash of each file), download
what differs and check each index file against its hash, check the free space, and only then write,
each file through :meth:`BoardFiles.put` (verified and atomic). A full flash mid-way stops with a
one-line error naming what was installed and what was not.
"""
from __future__ import annotations

import hashlib
import json
import ast
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import board_programs
from .errors import DeviceError
from .files import BoardFiles, FileTransferError

DEFAULT_INDEX = "https://micropython.org/pi/v2"

#: Short host prefixes and the raw-file URL each stands for ({org}, {repo}, {branch}, path).
HOSTS: dict[str, str] = {
    "github:": "https://raw.githubusercontent.com/{org}/{repo}/{branch}/{path}",
    "gitlab:": "https://gitlab.com/{org}/{repo}/-/raw/{branch}/{path}",
    "codeberg:": "https://codeberg.org/api/v1/repos/{org}/{repo}/raw/{path}?ref={branch}",
}

HTTP_TIMEOUT = 30.0   # seconds per request (connect and each read)
HASH_BATCH = 8        # files hashed per program on the board (bounded for the micro:bit's 16 KB heap)


class MipError(DeviceError):
    """An install failed; the message is one line saying what happened and what to do."""


@dataclass
class PlannedFile:
    """One file of the install: where it goes on the board and where it comes from."""

    path: str                 # path on the board
    package: str              # the package that lists it (for messages)
    source: str               # URL or local path
    short_hash: str | None = None   # sha256 prefix from the index, if the package gave one
    data: bytes | None = None
    state: str = "pending"    # pending -> unchanged | installed | failed | not installed


@dataclass
class InstallReport:
    """What an install did (also printed line by line through `say`)."""

    target: str
    packages: list[str] = field(default_factory=list)   # "name version" of every package resolved
    files: list[PlannedFile] = field(default_factory=list)

    def paths(self, state: str) -> list[str]:
        return [f.path for f in self.files if f.state == state]

    @property
    def bytes_installed(self) -> int:
        return sum(len(f.data or b"") for f in self.files if f.state == "installed")


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://")) or spec.startswith(tuple(HOSTS))


def rewrite_url(url: str, branch: str | None = None, hosts: dict[str, str] = HOSTS) -> str:
    """``github:org/repo/path`` (gitlab:, codeberg:) -> the raw file URL on branch `branch`
    (default HEAD, the repository's default branch); other URLs unchanged."""
    for prefix, pattern in hosts.items():
        if url.startswith(prefix):
            parts = url[len(prefix):].split("/")
            if len(parts) < 2 or not parts[0] or not parts[1]:
                raise MipError(f"{url}: expected {prefix}ORG/REPO[/PATH][@BRANCH]")
            return pattern.format(org=parts[0], repo=parts[1], branch=branch or "HEAD", path="/".join(parts[2:]))
    return url


def split_version(spec: str) -> tuple[str, str | None]:
    """``name@1.2`` -> (name, '1.2'); ``github:o/r@main`` -> (github:o/r, 'main'); an '@' inside a
    URL's host part (user@host) is not a version."""
    head, at, tail = spec.rpartition("@")
    if not at or not head or not tail:
        return spec, None
    if spec.startswith(("http://", "https://")) and "/" not in head.split("://", 1)[1]:
        return spec, None
    return head, tail


def _is_local(spec: str) -> bool:
    """A local file or folder: written as a path (a bare name is an index package, as in mpremote)."""
    if is_url(spec):
        return False
    return (spec.endswith(".json") or "/" in spec or os.sep in spec or spec.startswith(("~", "."))
            or (spec.endswith((".py", ".mpy")) and os.path.isfile(spec)))


def _join(target: str, path: str) -> str:
    path = path.lstrip("/")
    if not target:
        return path
    return target.rstrip("/") + "/" + path if target != "/" else "/" + path


class _Unreachable(MipError):
    """The server did not answer at all (the caller adds what to check)."""


class _Http:
    """Downloads with one-line errors (one keep-alive connection pool for the whole install)."""

    def __init__(self, timeout: float) -> None:
        try:
            import requests
        except ImportError:
            raise MipError("mip needs the requests package on this computer: pip install requests") from None
        self.requests = requests
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "edgekernel-mip"
        self.timeout = timeout

    def get(self, url: str) -> tuple[int, bytes]:
        """(HTTP status, body); MipError when the server cannot be reached at all."""
        try:
            response = self.session.get(url, timeout=self.timeout)
        except self.requests.exceptions.InvalidURL as exc:
            raise MipError(f"invalid URL {url}: {exc}") from None
        except self.requests.exceptions.RequestException as exc:
            raise _Unreachable(f"cannot reach {_server(url)} ({_reason(exc)})") from None
        return response.status_code, response.content

    def close(self) -> None:
        self.session.close()


def _server(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                  "timed out", "No route to host", "Network is unreachable", "certificate verify failed"):
        if known in text:
            return known.lower() if known != "Connection refused" else "connection refused"
    return type(exc).__name__


class MipInstaller:
    """Installs packages on the board behind `files`.

    >>> MipInstaller(BoardFiles.for_board(board), index="http://127.0.0.1:8000").install(["foo@1.0"])
    """

    def __init__(self, files: BoardFiles, *, index: str | None = None, target: str | None = None,
                 mpy: bool = True, say: Callable[[str], None] | None = None, hosts: dict[str, str] = HOSTS,
                 timeout: float = HTTP_TIMEOUT, cancelled: Callable[[], bool] = lambda: False) -> None:
        self.files = files
        # Asked between files: an interrupt that comes while no board code runs stops the install there.
        self.cancelled = cancelled
        self.index = (index or DEFAULT_INDEX).rstrip("/")
        self.target = target
        self.mpy = mpy
        self.say = say or (lambda line: None)
        self.hosts = hosts
        self.timeout = timeout
        self._http: _Http | None = None
        self._board: dict[str, Any] | None = None

    # -- the board -----------------------------------------------------------------------------

    def board_info(self) -> dict[str, Any]:
        """The board's .mpy version (0 when it has none) and sys.path (None when it has none)."""
        if self._board is None:
            code = ("import sys\nprint('='+repr((getattr(sys.implementation,'_mpy',0)&255,"
                    "getattr(sys,'path',None))))\n")
            result = self.files.session.exec(code, scratch=True, timeout=30)
            if result.reset is not None:
                raise MipError(f"the board reset ({result.reset} reset) while asked its MicroPython version: "
                               "nothing was installed; install again")
            if result.error is not None or result.timed_out:
                raise MipError("the board did not say its MicroPython version: "
                               f"{result.error.message if result.error else 'no answer in 30 s'}")
            text = result.output.decode(errors="replace")
            try:
                mpy, path = ast.literal_eval(text[text.index("=") + 1:].strip())
            except (ValueError, SyntaxError):
                raise MipError(f"unexpected answer from the board: {text[-80:]!r}") from None
            self._board = {"mpy": int(mpy), "path": list(path) if path is not None else None}
        return self._board

    def mpy_dir(self) -> str:
        """The index folder for this board: its .mpy version ('6'), or 'py' (source) with --no-mpy or
        on firmware that loads no .mpy files."""
        if not self.mpy:
            return "py"
        return str(self.board_info()["mpy"] or "py")

    def default_target(self) -> str:
        """The first folder of the board's sys.path ending in /lib (not in /rom); on a flat
        filesystem without one (the micro:bit) the top level."""
        path = self.board_info()["path"]
        for entry in path or ():
            if entry.endswith("/lib") and not entry.startswith("/rom"):
                return entry
        if not self.files.caps.mkdir:
            return ""
        raise MipError("the board's sys.path has no lib folder: give one with --target DIR (e.g. --target /lib)")

    # -- downloads -----------------------------------------------------------------------------

    def _get(self, url: str) -> tuple[int, bytes]:
        if self._http is None:
            self._http = _Http(self.timeout)
        try:
            return self._http.get(url)
        except _Unreachable as exc:
            advice = "the index URL (--index)" if url.startswith(self.index + "/") else "the URL"
            raise MipError(f"{exc}: check {advice} and this computer's network") from None

    def _read(self, source: str, what: str) -> bytes:
        """A file's bytes from a URL or a local path; MipError on any failure."""
        if source.startswith(("http://", "https://")):
            status, body = self._get(source)
            if status == 404:
                raise MipError(f"{what}: not found (HTTP 404 for {source})")
            if status != 200:
                raise MipError(f"{what}: HTTP {status} from {source}")
            return body
        try:
            with open(os.path.expanduser(source), "rb") as f:
                return f.read()
        except OSError as exc:
            raise MipError(f"{what}: cannot read {source} ({exc.strerror})") from None

    def _json(self, source: str, what: str, body: bytes | None = None) -> dict[str, Any]:
        if body is None:
            body = self._read(source, what)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MipError(f"malformed package.json for {what} ({source}): not JSON ({exc})") from None
        problem = _check_package_json(doc)
        if problem:
            raise MipError(f"malformed package.json for {what} ({source}): {problem}")
        return doc

    def _index_json(self, name: str, version: str) -> dict[str, Any]:
        mpy = self.mpy_dir()
        url = f"{self.index}/package/{mpy}/{name}/{version}.json"
        status, body = self._get(url)
        if status == 200:
            return self._json(url, f"{name} {version}", body)
        if status != 404:
            raise MipError(f"the index answered HTTP {status} for {name} ({url})")
        # Say which of name, version or .mpy build is missing.
        if version != "latest":
            status, body = self._get(f"{self.index}/package/{mpy}/{name}/latest.json")
            if status == 200:
                latest = _version_of(body)
                raise MipError(f"{name} has no version {version} in {self.index}"
                               f"{f' (latest is {latest})' if latest else ''}: install {name}@{latest or 'VERSION'}")
        if mpy != "py":
            status, _ = self._get(f"{self.index}/package/py/{name}/{version}.json")
            if status == 200:
                raise MipError(f"{name} has no build for .mpy v{mpy} (this board's MicroPython) in {self.index}: "
                               "use --no-mpy to install its .py source")
        raise MipError(f"no package {name!r} in {self.index} (HTTP 404): check the name, or give the index "
                       "with --index URL")

    # -- resolving ---------------------------------------------------------------------------

    def resolve(self, spec: str, version: str | None, target: str, plan: dict[str, PlannedFile],
                packages: list[str], seen: set[tuple[str, str | None]]) -> None:
        """Add `spec`'s files (and its dependencies') to `plan`, keyed by board path."""
        if (spec, version) in seen:
            return
        seen.add((spec, version))
        branch = version
        if is_url(spec) or _is_local(spec):
            local = not is_url(spec)
            if local:
                spec_path = os.path.expanduser(spec)
                if os.path.isdir(spec_path):
                    spec_path = os.path.join(spec_path, "package.json")
                elif not spec_path.endswith((".json", ".py", ".mpy")):
                    raise MipError(f"{spec}: no such package.json, folder or .py/.mpy file on this computer")
            else:
                spec_path = spec
            if spec_path.endswith((".py", ".mpy")):
                name = spec_path.rstrip("/").rsplit("/", 1)[-1]
                source = spec_path if local else rewrite_url(spec_path, branch, self.hosts)
                self._add(plan, PlannedFile(_join(target, name), spec, source))
                packages.append(name)
                return
            if not local and not spec_path.endswith(".json"):
                spec_path = spec_path.rstrip("/") + "/package.json"
            source = spec_path if local else rewrite_url(spec_path, branch, self.hosts)
            doc = self._json(source, spec)
            base = os.path.dirname(spec_path) if local else spec_path.rpartition("/")[0]
            label = spec
        else:
            version = version or "latest"
            doc = self._index_json(spec, version)
            base, local, branch = "", False, None
            label = f"{spec} {doc.get('version') or version}"
        packages.append(label)
        for path, short in doc.get("hashes", ()):
            self._add(plan, PlannedFile(_join(target, path), label,
                                        f"{self.index}/file/{short[:2]}/{short}", short_hash=short))
        for path, url in doc.get("urls", ()):
            if not is_url(url) and base:
                url = os.path.join(base, url) if local else f"{base}/{url}"   # relative to the package.json
            self._add(plan, PlannedFile(_join(target, path), label, rewrite_url(url, branch, self.hosts)))
        for dep, dep_version in doc.get("deps", ()):
            self.resolve(dep, dep_version or None, target, plan, packages, seen)

    @staticmethod
    def _add(plan: dict[str, PlannedFile], item: PlannedFile) -> None:
        plan[item.path] = item   # a later package listing the same path wins, as it would overwrite it

    # -- installing --------------------------------------------------------------------------

    def install(self, specs: list[str]) -> InstallReport:
        """Install each of `specs` (with dependencies). Prints one line per file and a summary."""
        started = time.monotonic()
        try:
            target = self.default_target() if self.target is None else self.target.rstrip("/") or (
                "/" if self.target.startswith("/") else "")
            report = InstallReport(target)
            plan: dict[str, PlannedFile] = {}
            seen: set[tuple[str, str | None]] = set()
            for spec in specs:
                name, version = split_version(spec)
                self.resolve(name, version, target, plan, report.packages, seen)
            report.files = list(plan.values())
            where = target or "the top level"
            kind = "source (.py)" if self.mpy_dir() == "py" else f".mpy v{self.mpy_dir()}"
            if not report.files:
                self.say(f"{', '.join(report.packages)}: no files to install\n")
                return report
            from_index = f" ({kind} files from {self.index})" if any(f.short_hash for f in report.files) else ""
            self.say(f"installing {', '.join(report.packages)} into {where}{from_index}\n")
            self._check_folders(report)
            self._compare_and_download(report)
            self._write(report)
        finally:
            if self._http is not None:
                self._http.close()
                self._http = None
        installed, unchanged = report.paths("installed"), report.paths("unchanged")
        self.say(f"done: {len(installed)} file{'s' * (len(installed) != 1)} installed "
                 f"({report.bytes_installed:,} bytes), {len(unchanged)} unchanged, in "
                 f"{time.monotonic() - started:.1f} s\n")
        return report

    def _check_folders(self, report: InstallReport) -> None:
        if self.files.caps.mkdir:
            return
        nested = [f.path for f in report.files if "/" in f.path.lstrip("/")]
        if nested or report.target not in ("", "/"):
            example = nested[0] if nested else report.files[0].path
            raise MipError(f"this board has a flat filesystem (no folders), and {example} needs one: only "
                           "packages of single files install here (nothing was installed)")

    def board_hashes(self, paths: list[str]) -> list[tuple[int, bytes | int] | None]:
        """(size, digest) of each file on the board (None where there is none), as BoardFiles.hash
        computes them, but several files per program: one round trip instead of one per file, which
        is most of a reinstall's time on a slow link."""
        sha256 = self.files.caps.sha256
        found: list[tuple[int, bytes | int] | None] = []
        for start in range(0, len(paths), HASH_BATCH):
            batch = paths[start:start + HASH_BATCH]
            body = board_programs.HASH_SHA if sha256 else board_programs.HASH_ADLER
            code = ("def _ekh(p):\n" + "".join(" " + line + "\n" for line in body.splitlines()) +
                    " h=H();t=0\n try:\n  f=open(p,'rb')\n  while 1:\n   c=f.read(256)\n   if not c:\n    break\n"
                    "   h.update(c);t+=len(c)\n  f.close()\n except OSError:\n  return None\n"   # none, or a folder
                    " return (t,h.digest())\n"
                    f"for p in {batch!r}:\n print('='+repr(_ekh(p)))\n")
            result = self.files.session.exec(code, scratch=True, timeout=120)
            if result.reset is not None:
                raise MipError(f"the board reset ({result.reset} reset) while hashing its files: nothing was "
                               "installed; install again")
            if result.error is not None or result.timed_out:
                why = f"{result.error.type}: {result.error.message}" if result.error else "no answer in 120 s"
                raise MipError(f"the board could not hash its files ({why}); nothing was installed")
            lines = [line[1:] for line in result.output.decode(errors="replace").splitlines() if line.startswith("=")]
            if len(lines) != len(batch):
                raise MipError(f"unexpected answer from the board hashing its files: {result.output[-80:]!r}")
            try:
                found += [ast.literal_eval(line.strip()) for line in lines]
            except (ValueError, SyntaxError):
                raise MipError(f"unexpected answer from the board hashing its files: {result.output[-80:]!r}") from None
        return found

    def _compare_and_download(self, report: InstallReport) -> None:
        sha256 = self.files.caps.sha256
        for item, on_board in zip(report.files, self.board_hashes([f.path for f in report.files])):
            if item.short_hash and sha256 and on_board is not None and \
                    isinstance(on_board[1], bytes) and on_board[1].hex().startswith(item.short_hash):
                item.state = "unchanged"    # the board's sha256 matches the index's: nothing to download
                self.say(f"unchanged  {item.path}\n")
                continue
            item.data = self._read(item.source, f"{item.package}: {item.path}")
            if item.short_hash and not hashlib.sha256(item.data).hexdigest().startswith(item.short_hash):
                raise MipError(f"{item.package}: {item.source} does not match its hash {item.short_hash} "
                               "(a broken download or index): nothing was installed")
            if on_board == (len(item.data), self.files.host_digest(item.data)):
                item.state = "unchanged"
                self.say(f"unchanged  {item.path}\n")

    def _write(self, report: InstallReport) -> None:
        todo = [f for f in report.files if f.state == "pending"]
        if not todo:
            return
        needed = sum(len(f.data or b"") for f in todo)
        if self.files.caps.statvfs:
            free = None
            for where in (report.target or "/", "/"):   # the target folder may not exist yet
                try:
                    free, _ = self.files.df(where)
                    break
                except FileTransferError:
                    continue
            if free is not None and needed > free:
                raise MipError(f"not enough space on the board: the files need {needed:,} bytes and "
                               f"{free:,} are free (nothing was installed; %df shows the space, %rm frees it)")
        made: set[str] = set()
        for item in todo:
            if self.cancelled():
                self._stop_after(item, todo)
                raise MipError(self._summary(report, item, "interrupted before it was written", "install again"))
            try:
                self._make_parents(item.path, made)
                self.files.put(item.data or b"", item.path)
            except FileTransferError as exc:
                self._stop_after(item, todo)
                raise MipError(self._failure(report, item, exc)) from None
            item.state = "installed"
            self.say(f"installed  {item.path} ({len(item.data or b''):,} bytes)\n")

    def _make_parents(self, path: str, made: set[str]) -> None:
        parts = path.split("/")[:-1]
        prefix = ""
        for i, part in enumerate(parts):
            prefix = part if i == 0 else f"{prefix}/{part}"
            if not part or prefix in made:
                continue
            self.files.mkdir(prefix, exist_ok=True)
            made.add(prefix)

    @staticmethod
    def _stop_after(item: PlannedFile, todo: list[PlannedFile]) -> None:
        item.state = "failed"
        for rest in todo:
            if rest.state == "pending":
                rest.state = "not installed"

    def _failure(self, report: InstallReport, item: PlannedFile, exc: Exception) -> str:
        text = str(exc)   # the put's own message, which says what is left of this file on the board
        full = "ENOSPC" in text or "[Errno 28]" in text or "OSError: 28" in text
        interrupted = "interrupted" in text.lower()
        cause = "the board's flash is full" if full else "interrupted" if interrupted else "writing it failed"
        advice = ("free space (%df, %rm) and install again" if full else "install again")
        return self._summary(report, item, f"{cause} ({text})", advice)

    @staticmethod
    def _summary(report: InstallReport, item: PlannedFile, cause: str, advice: str) -> str:
        done = report.paths("installed")
        left = [item.path] + report.paths("not installed")
        return (f"{item.path}: {cause}; installed: {', '.join(done) if done else 'nothing'}; "
                f"not installed: {', '.join(left)}; {advice}: files already there are skipped")


def _check_package_json(doc: Any) -> str | None:
    """What is wrong with a package.json's structure, or None."""
    if not isinstance(doc, dict):
        return "expected a JSON object"
    for key in ("hashes", "urls", "deps"):
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and
                (isinstance(e[1], str) or (key == "deps" and e[1] is None)) for e in value):
            return f"'{key}' must be a list of [string, string] pairs"
    for path, short in doc.get("hashes", []):
        if not short or any(c not in "0123456789abcdef" for c in short):
            return f"'hashes' entry for {path} is not a hex sha256 prefix"
    for path, _ in doc.get("hashes", []) + doc.get("urls", []):
        if not path or ".." in path.split("/"):
            return f"file path {path!r} is not a path inside the target folder"
    return None


def _version_of(body: bytes) -> str | None:
    try:
        version = json.loads(body).get("version")
    except (ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


def install(files: BoardFiles, specs: list[str], **options: Any) -> InstallReport:
    """Shortcut: MipInstaller(files, **options).install(specs)."""
    return MipInstaller(files, **options).install(specs)


__all__ = ["DEFAULT_INDEX", "HOSTS", "MipError", "MipInstaller", "InstallReport", "PlannedFile", "install",
           "rewrite_url", "split_version", "is_url"]
