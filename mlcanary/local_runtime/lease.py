"""Who holds an endpoint: a rollout owns it from its first change to its end, across processes.

The hold is a JSON document per endpoint, `<dir>/<endpoint>.json`, that every process can read: the
holder (id, pid, host, user, since), the rollout's plan and current step, what it set, and the intent
other terminals write for it (`mlcanary rollout pause|promote|abort`). Every read-modify-write runs
under an exclusive flock on `<dir>/<endpoint>.lock`, and the document is replaced atomically (a
temporary file renamed over it), so two processes can never both take the hold, and a reader never
sees half a document.

On the local target `<dir>` is the runtime's state directory's `rollouts/` folder; every writer of an
endpoint (local up, rehearse, a rollout, the Pulumi local-target resources) asks `admit` first. A
holder whose process is gone (kill -9) is detected (same host: the pid and its start time; another
host: a heartbeat older than HEARTBEAT_STALE_S), and its hold is taken over with a message. Ended
holds (and taken-over ones) are appended to `<dir>/<endpoint>.history.jsonl`.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlcanary.local_runtime import paths

HEARTBEAT_STALE_S = 60.0
_ENDPOINT_NAME = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")

# Holds this process owns: (folder, endpoint) -> rollout id. A process that lost its hold (taken over)
# keeps the entry, so its own later writes are refused too.
_mine: dict[tuple[Path, str], str] = {}


class EndpointHeld(RuntimeError):
    """Another process holds the endpoint (or this process's hold was taken over)."""


class LeaseFileError(ValueError):
    """The hold document cannot be read (not JSON, not an object)."""


def lease_dir(root: Path) -> Path:
    """The local target's holds: inside the runtime's state directory."""
    return root / "rollouts"


def stack_lease_dir(stack: str) -> Path:
    """An azure-target rollout's holds: a user state folder keyed by the Pulumi stack's name."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stack)
    return Path(base).expanduser() / "mlcanary" / "stacks" / safe / "rollouts"


def check_endpoint_name(endpoint: str) -> None:
    if not (3 <= len(endpoint) <= 32 and _ENDPOINT_NAME.match(endpoint)):
        raise ValueError(f"endpoint {endpoint!r}: an endpoint name is 3-32 letters, digits and hyphens, "
                         "starting with a letter and not ending with a hyphen")


def document_file(directory: Path, endpoint: str) -> Path:
    return directory / f"{endpoint}.json"


def history_file(directory: Path, endpoint: str) -> Path:
    return directory / f"{endpoint}.history.jsonl"


# --- the process behind a hold ----------------------------------------------------------------------

def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def this_process() -> dict[str, Any]:
    pid = os.getpid()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"pid": pid, "host": socket.gethostname(), "user": user, "processStart": process_start(pid)}


def holder_alive(doc: dict[str, Any], now: float | None = None) -> bool:
    holder = doc.get("holder") or {}
    if holder.get("host") != socket.gethostname():
        return (now or time.time()) - float(doc.get("heartbeat") or 0) < HEARTBEAT_STALE_S
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    if _process_state(pid) == "Z":
        return False  # killed, not yet reaped by its parent
    started = holder.get("processStart")
    return started is None or process_start(pid) in (None, started)


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def _is_this_process(doc: dict[str, Any]) -> bool:
    holder, me = doc.get("holder") or {}, this_process()
    return all(holder.get(key) == me[key] for key in ("pid", "host", "processStart"))


def is_held(doc: dict[str, Any] | None) -> bool:
    """A hold that has not ended (its holder may have died)."""
    return doc is not None and doc.get("outcome") is None


def describe(doc: dict[str, Any]) -> str:
    holder = doc.get("holder") or {}
    since = time.strftime("%H:%M:%S", time.localtime(doc.get("stepSince") or doc.get("startedAt") or 0))
    record = doc.get("record") or "no --record"
    return (f"rollout {doc.get('id')} (pid {holder.get('pid')} on {holder.get('host')}, user {holder.get('user')}; "
            f"step {doc.get('step') or 'start'} since {since}; record {record})")


# --- reading and writing under the lock -------------------------------------------------------------

def read(directory: Path, endpoint: str) -> dict[str, Any] | None:
    """The document as last written (no lock needed: it is replaced atomically)."""
    try:
        text = document_file(directory, endpoint).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        raise LeaseFileError(f"{document_file(directory, endpoint)}: not a JSON document of a rollout's hold; "
                             "remove it if no rollout runs") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise LeaseFileError(f"{document_file(directory, endpoint)}: not a rollout's hold (no id); "
                             "remove it if no rollout runs")
    return doc


def write_atomically(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Locked:
    """The document of one endpoint while this process holds the lock on it."""

    def __init__(self, directory: Path, endpoint: str):
        self.directory, self.endpoint = directory, endpoint
        self.doc = read(directory, endpoint)

    def save(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        write_atomically(document_file(self.directory, self.endpoint), json.dumps(doc, indent=1))

    def append_history(self, doc: dict[str, Any]) -> None:
        entry = {key: doc.get(key) for key in ("id", "endpoint", "startedAt", "endedAt", "outcome", "message", "step",
                                               "stepIndex", "record", "holder", "interventions", "target", "baseline",
                                               "takenOverBy")}
        path = history_file(self.directory, self.endpoint)
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


@contextlib.contextmanager
def locked(directory: Path, endpoint: str) -> Iterator[Locked]:
    check_endpoint_name(endpoint)
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.private_subdir(directory)
    descriptor = os.open(directory / f"{endpoint}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield Locked(directory, endpoint)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def end_hold(held: Locked, doc: dict[str, Any], outcome: str, message: str, **extra: Any) -> dict[str, Any]:
    ended = {**doc, "outcome": outcome, "message": message, "endedAt": time.time(), **extra}
    held.save(ended)
    held.append_history(ended)
    return ended


# --- the writers -------------------------------------------------------------------------------------

def admit(directory: Path, endpoint: str, writer: str, force: bool = False,
          notice: Callable[[str], None] = lambda _: None) -> None:
    """Let `writer` change the endpoint, or raise EndpointHeld. The holder itself is admitted; a dead
    holder's hold is taken over (with a notice); a live one's only with force (recorded as a takeover)."""
    with locked(directory, endpoint) as held:
        doc = held.doc
        mine = _mine.get((directory, endpoint))
        if mine is not None and (doc is None or doc.get("id") != mine or not is_held(doc)):
            by = (doc or {}).get("takenOverBy") or {}
            raise EndpointHeld(f"this rollout ({mine}) no longer holds endpoint {endpoint}"
                               + (f": taken over by {by.get('writer')} (pid {by.get('pid')}, user {by.get('user')})"
                                  if by else "") + "; it changes nothing more")
        if not is_held(doc) or doc.get("id") == mine:
            return
        _take_over(held, doc, writer, force, notice)


def _take_over(held: Locked, doc: dict[str, Any], writer: str, force: bool, notice: Callable[[str], None]) -> None:
    by = {"writer": writer, **this_process(), "at": time.time()}
    if not holder_alive(doc):
        end_hold(held, doc, "died", f"the rollout's process died; its hold was taken over by {writer}",
                 takenOverBy=by)
        notice(f"warning: {describe(doc)} died (its process is gone); its hold on endpoint {held.endpoint} is "
               f"taken over by {writer}")
        return
    if not force:
        raise EndpointHeld(held_message(held.endpoint, doc))
    end_hold(held, doc, "taken-over", f"taken over by {writer} (--force)", takenOverBy=by)
    notice(f"warning: --force: took endpoint {held.endpoint} over from {describe(doc)}; the takeover is recorded "
           "and that rollout stops without changing anything more")


def acquire(directory: Path, endpoint: str, fields: dict[str, Any], force: bool = False,
            notice: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Take the endpoint's hold for a new rollout (fields: its id, plan, record ...); EndpointHeld if a
    live holder keeps it and force is not given."""
    with locked(directory, endpoint) as held:
        doc = held.doc
        # A resumed rollout keeps its id: its hold is taken back from its dead process, never from a
        # live one (a second `rollout --resume` of the same record while the first runs).
        if is_held(doc) and (doc.get("id") != fields["id"] or (holder_alive(doc) and not _is_this_process(doc))):
            _take_over(held, doc, f"rollout {fields['id']}", force, notice)
        now = time.time()
        new = {"endpoint": endpoint, "holder": this_process(), "startedAt": now, "heartbeat": now,
               "outcome": None, "intent": {}, "interventions": [], **fields}
        held.save(new)
        _mine[(directory, endpoint)] = fields["id"]
        return new


def adopt(directory: Path, endpoint: str) -> dict[str, Any]:
    """Take over the hold of a rollout whose process died, to finish it here (`rollout abort`)."""
    with locked(directory, endpoint) as held:
        doc = held.doc
        if not is_held(doc):
            raise EndpointHeld(f"no rollout holds endpoint {endpoint}")
        if holder_alive(doc):
            raise EndpointHeld(f"{describe(doc)} is running: it acts on `abort` itself")
        adopted = {**doc, "holder": this_process(), "adoptedFrom": doc.get("holder"), "heartbeat": time.time()}
        held.save(adopted)
        _mine[(directory, endpoint)] = doc["id"]
        return adopted


def finish(directory: Path, endpoint: str, rollout_id: str, outcome: str, message: str, **extra: Any) -> None:
    """End a hold this process has (adopted), and let go of it."""
    with locked(directory, endpoint) as held:
        if held.doc is not None and held.doc.get("id") == rollout_id and is_held(held.doc):
            end_hold(held, held.doc, outcome, message, **extra)
    forget(directory, endpoint)


def release(directory: Path, endpoint: str, rollout_id: str) -> None:
    """An adopted hold that could not be finished: it ends as died (the endpoint is as the rollout left it)."""
    finish(directory, endpoint, rollout_id, "died", "the rollout's process died; restoring its baseline failed")


def forget(directory: Path, endpoint: str) -> None:
    """This process ends its part (after ending the hold): later admits here are no longer refused."""
    _mine.pop((directory, endpoint), None)


def read_history(directory: Path, endpoint: str) -> list[dict[str, Any]]:
    try:
        lines = history_file(directory, endpoint).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise LeaseFileError(f"{history_file(directory, endpoint)}:{number}: not a JSON line of a rollout "
                                 "history") from None
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def refuse_if_held(root: Path, endpoints: set[str] | list[str], writer: str) -> None:
    """For writers that take no hold over (rehearse, the Pulumi local-target resources): EndpointHeld
    if a rollout holds one of `endpoints`; a dead holder's hold is taken over (that is only a notice)."""
    for endpoint in sorted(endpoints):
        admit(lease_dir(root), endpoint, writer, force=False,
              notice=lambda message: print(message, file=sys.__stderr__ or sys.stderr, flush=True))


def refuse_at_once(root: Path, endpoint: str, force: bool) -> None:
    """Before any slow work (the gate): EndpointHeld if a live rollout holds `endpoint` and not `force`.
    Only a look: a dead holder's hold is taken over (and a forced takeover recorded) by the apply itself."""
    try:
        doc = read(lease_dir(root), endpoint)
    except LeaseFileError:
        return  # the apply's own check says what is wrong with it
    if force or not is_held(doc) or not holder_alive(doc):
        return
    raise EndpointHeld(held_message(endpoint, doc))


def held_message(endpoint: str, doc: dict[str, Any]) -> str:
    return (f"endpoint {endpoint} is held by {describe(doc)}; nothing was changed. See it with `mlcanary rollout "
            f"status {endpoint}`, steer it with `mlcanary rollout pause|resume|promote|abort`, or pass --force to "
            "take it over (recorded)")
