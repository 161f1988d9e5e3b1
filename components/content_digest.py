"""The content digest of a local code or model folder: azure-ai-ml's own, bounded, and paid once.

azure-ai-ml names an anonymous asset by a hash of the folder (`_get_dir_hash`: the names and the
bytes of what `.amlignore` / `.gitignore` leaves in, in its order, symlinks followed). The azure
target registers folders under it and the local target pins its copies by it (uploads.py,
local_runtime/snapshots.py). Importing azure-ai-ml costs about two seconds and hashing reads every
byte, on every `check` and `local up`; so this module computes the same digest itself (with
azure-ai-ml's own ignore-pattern code, loaded from its file) and remembers it in the user's cache,
keyed by a cheap signature of the folder: what the walk looked at (paths, kinds, sizes, modification
and change times, inodes) and the ignore file's text. An unchanged folder costs one walk of `stat`
calls; tests/test_uploads_digest.py pins the digest to azure-ai-ml's over a corpus.

One difference from `get_object_hash`, kept from the first version of uploads.py: a directory holding
no file that would be uploaded (`__pycache__/` ignored, so `__pycache__` holds nothing) is left out;
azure-ai-ml hashes its name, so the first `__pycache__` made a new version though nothing uploaded
changed.

The walk is bounded by the limits below, the same the local runtime's copy of a folder obeys: `/`,
home directories and device trees are refused before walking, and a folder over the limits is
refused with its name, never walked to the end (`code: /` used to walk the whole disk).
"""

from __future__ import annotations

import contextlib
import errno
import io
import hashlib
import importlib.util
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlcanary.components.user_files import UnusableFile, read_bytes

GIB = 1024**3
MAX_ENTRIES = 20_000  # files and folders a code or model folder may hold (ignored ones not counted)
MAX_BYTES = 20 * GIB  # the total size of the files in it
MAX_DEPTH = 64  # folders nested in folders
MAX_IGNORE_FILE_BYTES = 1024**2
DEVICE_TREES = ("/dev", "/proc", "/sys")

HASH_SEED = b"Initialize for october 2021 AML CLI version"  # azure-ai-ml's get_object_hash
CHUNK = 1024 * 1024
CACHE_ENTRIES = 1000  # remembered folders; the least recently written go first
CACHE_FORMAT = 1
RACY_S = 2.0  # a file changed this recently may change again within its timestamp's resolution


class FolderRefused(ValueError):
    """A folder that cannot be hashed (too big, a system tree, a symlink loop); the message names it."""


def refused_root_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is refused before any walk: `/`, a home directory or the folder holding them, a
    device tree. Checked on the real path, so a symlink to `/` is `/`."""
    real = os.path.realpath(path)
    home = os.path.realpath(Path.home())
    homes = {home, os.path.dirname(home), "/home", "/root", "/Users"}
    if real == "/":
        return "is the root of the file system"
    if real in homes:
        return "is a home directory (or the folder of home directories)"
    if any(real == tree or real.startswith(tree + "/") for tree in DEVICE_TREES):
        return "is in a device or kernel tree (/dev, /proc, /sys)"
    return None


def limits_text() -> str:
    return f"at most {MAX_ENTRIES} files and folders, {MAX_BYTES // GIB} GiB, {MAX_DEPTH} levels deep"


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be a code or model folder (a system tree, over the limits, a symlink loop),
    found by the same bounded walk as the digest's, without reading any file; None if it can."""
    problem = refused_root_problem(path)
    if problem:
        return _root_refusal(str(path), problem)
    try:
        _walk(Path(path), str(path))
    except FolderRefused as err:
        return str(err)
    return None


def _root_refusal(shown: str, problem: str) -> str:
    return f"{shown} {problem}: point code or model at the folder the deployment needs"


def content_digest(path: str | os.PathLike, *, remember: bool = True) -> str:
    """azure-ai-ml's digest of the file or folder `path` (ignore files applied, empty folders left out).

    `remember`: read and keep it in the user's cache, keyed by the folder's signature (a fresh copy
    that is hashed once, like a snapshot being verified, passes False). Raises FolderRefused.
    """
    shown = str(path)
    problem = refused_root_problem(path)
    if problem:
        raise FolderRefused(_root_refusal(shown, problem))
    started = time.time()
    walk = _walk(Path(path), shown)
    cache = _cache_file(path) if remember else None
    if cache is not None:
        remembered = _read_cache(cache)
        if remembered is not None and remembered[0] == walk.signature:
            return remembered[1]
    digest = walk.digest()
    if cache is not None and walk.newest < started - RACY_S and _walk(Path(path), shown).signature == walk.signature:
        _write_cache(cache, walk.signature, digest)
    return digest


# ---- the walk: what azure-ai-ml's _get_dir_hash visits, in its order --------------------------------


@dataclass
class _Walk:
    items: list[tuple[bytes, Path | None]]  # (name to hash, file whose bytes follow it); a file path: (b"", it)
    signature: str
    newest: float  # the latest modification/change time of a file read

    def digest(self) -> str:
        digest, read = hashlib.sha256(HASH_SEED), 0
        for name, file in self.items:
            digest.update(name)
            if file is None:
                continue
            with _open_regular(file) as stream:
                while chunk := stream.read(CHUNK):
                    read += len(chunk)
                    if read > MAX_BYTES:
                        raise FolderRefused(f"{file}: grew past {MAX_BYTES // GIB} GiB while it was read")
                    digest.update(chunk)
        return digest.hexdigest()


def _open_regular(file: Path):
    """`file` opened for reading, if it is still a regular file (not a FIFO swapped in since the walk)."""
    descriptor = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    stream = os.fdopen(descriptor, "rb")
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        stream.close()
        raise FolderRefused(f"{file}: is no longer a regular file")
    return stream


class _Walker:
    def __init__(self, root: Path, shown: str):
        self.root, self.shown = root, shown
        self.items: list[tuple[bytes, Path | None]] = []
        self.signature = hashlib.sha256(f"{CACHE_FORMAT}\0{os.path.abspath(root)}\0{os.path.realpath(root)}".encode())
        self.counted: set[str] = set()
        self.bytes = 0
        self.newest = 0.0
        self.listings: dict[str, list[Path]] = {}
        self.has_uploads: dict[str, bool] = {}
        self.ignore = _IgnoreRules.of(root, self._refuse, self._note)

    def _refuse(self, why: str) -> FolderRefused:
        return FolderRefused(f"{self.shown}: {why}")

    def _note(self, *parts: object) -> None:
        self.signature.update(repr(parts).encode("utf-8", "surrogateescape") + b"\n")

    def _count(self, path: Path) -> None:
        self.counted.add(str(path))
        if len(self.counted) > MAX_ENTRIES:
            raise self._refuse(
                f"holds more than {MAX_ENTRIES} files and folders (not counting what .amlignore/.gitignore leave out); "
                f"a code or model folder may hold {limits_text()}: point it at what the deployment needs, "
                "or leave the rest out with an .amlignore")

    def listing(self, directory: Path) -> list[Path]:
        """The entries of `directory` in azure-ai-ml's order (sorted by lower-cased path; ties stay in
        the order the file system lists them)."""
        key = str(directory)
        if key not in self.listings:
            try:
                names = os.listdir(directory)
            except OSError as err:
                raise self._refuse(f"cannot list {directory}: {err.strerror}") from None
            entries = sorted((directory / name for name in names), key=lambda p: str(p).lower())
            self._note("list", key, [p.name for p in entries])
            self.listings[key] = entries
        return self.listings[key]

    def kind(self, path: Path) -> tuple[str, os.stat_result | None]:
        """"file", "dir" or "other" (a broken link, a FIFO, a device), following symlinks."""
        try:
            status = os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise self._refuse(f"{path} is a symlink loop") from None
            kind, status = "other", None
        else:
            kind = "file" if stat.S_ISREG(status.st_mode) else "dir" if stat.S_ISDIR(status.st_mode) else "other"
        self._note("kind", str(path), kind)
        return kind, status

    def has_uploaded_file(self, directory: Path) -> bool:
        """Whether `Path(directory).rglob("*")` finds a file the ignore file keeps: what the first
        uploads.py asked of azure-ai-ml. rglob descends into real folders only, not symlinked ones."""
        key = str(directory)
        if key not in self.has_uploads:
            found = False
            for entry in self.listing(directory):
                kind, _ = self.kind(entry)
                if kind == "file" and not self.ignore.excluded(entry):
                    found = True
                    break
                if kind == "dir" and not os.path.islink(entry) and not self.ignore.prunes(entry):
                    self._count(entry)
                    if self.has_uploaded_file(entry):
                        found = True
                        break
            self.has_uploads[key] = found
        return self.has_uploads[key]

    def walk_dir(self, directory: Path, depth: int, ancestors: frozenset[tuple[int, int]]) -> None:
        if depth > MAX_DEPTH:
            raise self._refuse(f"{directory} is nested more than {MAX_DEPTH} folders deep")
        for entry in self.listing(directory):
            if self.ignore.excluded(entry):
                continue
            kind, status = self.kind(entry)
            if kind == "dir" and not self.has_uploaded_file(entry):
                continue
            self._count(entry)
            try:
                name = entry.name.encode()
            except UnicodeEncodeError:
                raise self._refuse(f"{entry}: the name is not valid UTF-8 (azure-ai-ml cannot hash it)") from None
            if kind == "file":
                self.add_file(name, self.followed(entry), status)
            elif kind == "dir":
                self.items.append((name, None))
                identity = (status.st_dev, status.st_ino)
                if identity in ancestors:
                    raise self._refuse(f"{entry} leads back into a folder that holds it (a symlink loop)")
                self.walk_dir(self.followed(entry), depth + 1, ancestors | {identity})
            else:
                self.items.append((name, None))  # a broken link, a FIFO: azure-ai-ml hashes the name only

    def followed(self, entry: Path) -> Path:
        """azure-ai-ml's `_resolve_path`: a symlink's final target, whose own path rules its ignore check."""
        if not os.path.islink(entry):
            return entry
        try:
            real = entry.resolve(strict=True)
        except (OSError, RuntimeError):
            raise self._refuse(f"{entry} is a symlink loop") from None
        problem = refused_root_problem(real)
        if problem:
            raise self._refuse(f"{entry} links to {real}, which {problem}")
        self._note("link", str(entry), str(real))
        return real

    def add_file(self, name: bytes, file: Path, status: os.stat_result) -> None:
        self.bytes += status.st_size
        if self.bytes > MAX_BYTES:
            raise self._refuse(f"holds more than {MAX_BYTES // GIB} GiB; a code or model folder may hold {limits_text()}")
        self.newest = max(self.newest, status.st_mtime, status.st_ctime)
        self._note("file", str(file), status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev)
        self.items.append((name, file))


def _walk(root: Path, shown: str) -> _Walk:
    walker = _Walker(root, shown)
    kind, status = walker.kind(root)
    if kind == "dir":
        identity = (status.st_dev, status.st_ino)
        walker.walk_dir(root, 1, frozenset({identity}))
    elif kind == "file":
        walker.add_file(b"", walker.followed(root), status)
    else:
        raise FolderRefused(f"{shown}: not a file or folder" if status else f"{shown}: does not exist")
    return _Walk(walker.items, walker.signature.hexdigest(), walker.newest)


# ---- the ignore file, read as azure-ai-ml reads it ---------------------------------------------------


class _IgnoreRules:
    """azure-ai-ml's IgnoreFile: `.amlignore`, else `.gitignore`, in the folder's root; each line a
    git wildmatch pattern (azure-ai-ml's vendored copy of pathspec); the last pattern that matches a
    path relative to the ignore file's (real) folder decides."""

    def __init__(self, patterns: list, base: str | None):
        self.patterns = [p for p in patterns if p.include is not None]
        self.base = base
        self.negates = any(p.include is False for p in self.patterns)

    @classmethod
    def of(cls, root: Path, refuse: Callable[[str], FolderRefused], note: Callable[..., None]) -> _IgnoreRules:
        if not root.is_dir():  # a single file is hashed without ignore rules
            return cls([], None)
        for name in (".amlignore", ".gitignore"):
            ignore_file = (root / name).resolve()
            if not ignore_file.exists():
                continue
            try:
                data = read_bytes(ignore_file, name, MAX_IGNORE_FILE_BYTES)
                lines = list(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig"))  # as open() reads it
            except UnusableFile as err:
                raise refuse(str(err)) from None
            except UnicodeDecodeError:
                raise refuse(f"{ignore_file} is not UTF-8 text") from None
            note("ignore", str(ignore_file), lines)
            pathspec = _azure_pathspec()
            try:
                patterns = [pathspec.GitWildMatchPattern(line.rstrip()) for line in lines if line]
            except pathspec.GitWildMatchPatternError as err:
                raise refuse(f"{ignore_file}: {err}") from None
            return cls(patterns, str(ignore_file.parent))
        return cls([], None)

    def excluded(self, path: Path) -> bool:
        if not self.patterns:
            return False
        relative = _azure_pathspec().normalize_file(os.path.relpath(path.absolute(), self.base))
        matched = False
        for pattern in self.patterns:
            if pattern.match_file(relative) is not None:
                matched = pattern.include
        return matched

    def prunes(self, directory: Path) -> bool:
        """Whether nothing under an excluded `directory` can be kept: a pattern that matches a folder
        matches everything under it, so only a negated pattern (`!keep.py`) can keep something."""
        return not self.negates and self.excluded(directory)


_PATHSPEC = None


def _azure_pathspec():
    """azure-ai-ml's vendored pathspec (azure/ai/ml/_utils/_pathspec.py, standard library only),
    loaded from its file: importing it by name would import all of azure-ai-ml first."""
    global _PATHSPEC
    if _PATHSPEC is None:
        azure = importlib.util.find_spec("azure")
        locations = list(azure.submodule_search_locations or []) if azure else []
        found = [Path(p) / "ai" / "ml" / "_utils" / "_pathspec.py" for p in locations]
        found = [p for p in found if p.is_file()]
        if not found:
            raise RuntimeError("azure-ai-ml is not installed (its ignore-file rules are needed): pip install azure-ai-ml")
        spec = importlib.util.spec_from_file_location("mlcanary.components._azure_pathspec", found[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _PATHSPEC = module
    return _PATHSPEC


# ---- the user's cache: $XDG_CACHE_HOME/mlcanary/digests, one small file per folder --------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "mlcanary" / "digests"


def _private_dir(folder: Path) -> bool:
    """Create `folder` (0700) if needed; True if it is a real directory of this user that nobody else can write."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid() and not status.st_mode & 0o077


def _cache_file(path: str | os.PathLike) -> Path | None:
    folder = cache_dir()
    if not _private_dir(folder):
        return None  # no usable cache: every digest is computed, which is only slower
    key = hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:40]
    return folder / f"{key}.json"


def _read_cache(file: Path) -> tuple[str, str] | None:
    try:
        descriptor = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return None
        data = stream.read(4096)
    try:
        entry = json.loads(data)
        signature, digest = entry["signature"], entry["digest"]
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v) for v in (signature, digest)):
        return None
    return signature, digest


def _write_cache(file: Path, signature: str, digest: str) -> None:
    """Atomically: a concurrent reader sees the old entry or the new one, never half of one."""
    import tempfile  # only on a miss: most runs read the cache

    with contextlib.suppress(OSError):
        descriptor, temporary = tempfile.mkstemp(dir=file.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(descriptor, "w") as stream:
                json.dump({"signature": signature, "digest": digest}, stream)
            os.replace(temporary, file)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _prune(file.parent)


def _prune(folder: Path) -> None:
    entries = [entry for entry in os.scandir(folder) if entry.name.endswith(".json")]
    if len(entries) <= CACHE_ENTRIES:
        return
    entries.sort(key=lambda entry: entry.stat(follow_symlinks=False).st_mtime)
    for entry in entries[: len(entries) - CACHE_ENTRIES]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
