"""Where the local runtime keeps its state: a flag, else $MLCANARY_STATE_DIR, else ~/.mlcanary/local.

The state directory holds keys, the control token, worker sockets and logs. Like ssh with its key
files, the runtime refuses one that another user owns or can write (or whose parents another user
could swap), saying what is wrong and how to fix it; and it opens every file in it without following
symbolic links (`open_private`), so a planted link cannot turn a write into one of the owner's files.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import tempfile
from pathlib import Path

ENV_VAR = "MLCANARY_STATE_DIR"
SOCKET_PATH_MAX = 107  # AF_UNIX sun_path is 108 bytes with its terminating NUL
SOCKET_NAME_LENGTH = len("0123456789ab.sock")


def state_dir(explicit: Path | str | None = None) -> Path:
    chosen = explicit or os.environ.get(ENV_VAR) or Path.home() / ".mlcanary" / "local"
    return Path(chosen).expanduser().resolve()


class UnsafeStateDir(RuntimeError):
    """Another user owns or can write the state directory (or could swap one of its parents)."""


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def trust_problem(path: Path) -> str | None:
    """Why another user could redirect, block or read what the runtime keeps in `path` (an existing
    folder), or None: it must be this user's and not writable by others, and each parent this user's or
    root's, not writable by others unless sticky (as /tmp is)."""
    me = os.getuid()
    info = os.lstat(path)
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != me:
        return (f"is owned by {_user(info.st_uid)}, not by you ({_user(me)}): its owner could read the endpoint keys "
                "or replace files the runtime writes; use a folder of your own (--state-dir or $MLCANARY_STATE_DIR)")
    if mode & 0o022:
        return (f"can be written by other users (mode {mode:o}), who could plant links the runtime would write "
                f"through: run `chmod go-w {path}` (better, `chmod 700 {path}`)")
    for parent in path.parents:
        parent_info = os.stat(parent)
        parent_mode = stat.S_IMODE(parent_info.st_mode)
        if parent_info.st_uid not in (me, 0):
            return (f"lies in {parent}, owned by {_user(parent_info.st_uid)}, who could swap it for another folder; "
                    "use a folder in your home directory")
        if parent_mode & 0o022 and not parent_mode & stat.S_ISVTX:
            return (f"lies in {parent}, which other users can write (mode {parent_mode:o}) and so could swap it for "
                    f"another folder: run `chmod go-w {parent}`, or use a folder in your home directory")
    return None


def ensure_private_dir(path: Path) -> str | None:
    """Create `path` as 0700 if it does not exist. An existing folder is never chmod-ed (it may be
    the user's own, shared on purpose): one another user owns or can write is refused (UnsafeStateDir),
    and a warning is returned if others can read or enter it."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        path.chmod(0o700)
    problem = trust_problem(path)
    if problem:
        raise UnsafeStateDir(f"state directory {path} {problem}")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return (f"state directory {path} is readable by other users (mode {mode:o}); the runtime keeps keys and "
                "worker sockets in private files and folders inside it, but consider `chmod 700` on it")
    return None


def state_file(root: Path) -> Path:
    return root / "state.json"


def runtime_file(root: Path) -> Path:
    """pid and control port of the running runtime."""
    return root / "runtime.json"


def workers_file(root: Path) -> Path:
    """Process groups of the workers the runtime started (to clean up after a crash)."""
    return root / "workers.json"


def metrics_file(root: Path) -> Path:
    """The request counts a stopped runtime kept (written when it stops)."""
    return root / "metrics.json"


def runtime_log(root: Path) -> Path:
    return root / "runtime.log"


def runtime_stderr(root: Path) -> Path:
    """What the runtime process printed itself (why it refused to start, a crash)."""
    return root / "runtime.stderr"


def lock_file(root: Path) -> Path:
    return root / "runtime.lock"


def stage_lock_file(root: Path) -> Path:
    """Held by `mlcanary local up` for a whole stage: one stage change at a time."""
    return root / "stage.lock"


def deployment_log_dir(root: Path, endpoint: str, deployment: str) -> Path:
    return root / "logs" / endpoint / deployment


SOCKET_FALLBACK_PREFIX = f"mlcanary-{os.getuid()}-"
_RANDOM_NAME_LENGTH = 8  # what mkdtemp adds


def socket_dir(root: Path) -> Path:
    """The private folder of the workers' Unix sockets: inside the state directory, or, when that
    path is too long for a socket, a new folder in the temp dir with an unpredictable name (mkdtemp:
    created 0700, exclusively), so another user can neither take its name first nor redirect it.
    The runtime records it in workers.json, to find what a crash left there."""
    inside = root / "sock"
    if len(str(inside).encode()) + 1 + SOCKET_NAME_LENGTH <= SOCKET_PATH_MAX:
        private_subdir(inside)
        return inside
    # $TMPDIR first; /tmp when $TMPDIR is itself too deep (a test's or a sandbox's temp dir).
    for parent in (Path(tempfile.gettempdir()), Path("/tmp")):
        longest = len(str(parent / SOCKET_FALLBACK_PREFIX).encode()) + _RANDOM_NAME_LENGTH + 1 + SOCKET_NAME_LENGTH
        if longest <= SOCKET_PATH_MAX and parent.is_dir():
            return Path(tempfile.mkdtemp(prefix=SOCKET_FALLBACK_PREFIX, dir=parent))
    raise OSError(f"no usable folder for worker sockets: {inside} exceeds {SOCKET_PATH_MAX} bytes and so does the "
                  "temp dir; use a shorter --state-dir")


def is_fallback_socket_dir(path: Path) -> bool:
    """A socket folder this user's runtime made in the temp dir (a recorded one is checked before use)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (path.name.startswith(SOCKET_FALLBACK_PREFIX) and path.parent in (Path(tempfile.gettempdir()), Path("/tmp"))
            and stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077)


def open_private(path: Path, flags: int) -> int:
    """os.open for a file in the state directory: never through a symbolic link, created 0600."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link; the runtime does not follow links in its state "
                          "directory: remove it", str(path)) from None
        raise


def private_subdir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(f"{path} exists and is not a folder of this user; remove it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours, made by the runtime: keep it private
