"""Pinned versions of a deployment's code and model folders, like registered assets on Azure.

On apply, the runtime copies the code and model folders into the state directory, content-addressed
by the digest the azure target registers them under (azure-ai-ml's hash with the folder's
`.amlignore` / `.gitignore`: `components/content_digest.py`), one copy per digest, and workers serve
the copy. Editing a folder after an apply changes nothing that runs; the next apply sees a new digest,
which is a new version of the deployment. A copy no deployment uses any more (running or draining) is
removed by `collect`.

Layout: snapshots/<digest>/<folder or file name> (Azure mounts a model under its own name).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlcanary.components.content_digest import GIB, MAX_BYTES, MAX_ENTRIES, FolderRefused, content_digest
from mlcanary.components.local_payload import PINNED
from mlcanary.local_runtime.os_errors import describe_os_error


class SnapshotFailed(RuntimeError):
    """A folder could not be pinned; the message names the folder and why ('no space left on device: <path>')."""

    def __init__(self, message: str, no_space: bool = False):
        super().__init__(message)
        self.no_space = no_space


def snapshots_dir(root: Path) -> Path:
    return root / "snapshots"


def served_path(root: Path, spec: dict[str, Any], key: str) -> Path | None:
    """Where the workers of `spec` find its `code` or `model`: the pinned copy, or (a state written
    before pinning existed) the user's path itself."""
    path = spec.get(key)
    if not path:
        return None
    digest = spec.get(PINNED[key])
    return snapshots_dir(root) / digest / Path(path).name if digest else Path(path)


def digests_of(specs: Iterable[dict[str, Any]]) -> set[str]:
    return {spec[key] for spec in specs for key in PINNED.values() if spec.get(key)}


def _upload_files(source: Path) -> list[tuple[str, str]]:
    """(path, path inside the copy) of every file Azure would upload: the ignore file applied."""
    if source.is_file():
        return [(str(source), source.name)]
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    return [(local, remote) for local, remote in get_upload_files_from_folder(source, ignore_file=get_ignore_file(source))]


def _copy(source: Path, target: Path) -> None:
    if source.is_file():
        shutil.copy2(source, target)
        return
    target.mkdir()
    files = _upload_files(source)
    if len(files) > MAX_ENTRIES:  # the digest's limits (content_digest.py), which the source passed
        raise SnapshotFailed(f"{source}: holds more than {MAX_ENTRIES} files to copy")
    copied = 0
    for local, remote in files:
        copied += os.stat(local).st_size
        if copied > MAX_BYTES:
            raise SnapshotFailed(f"{source}: holds more than {MAX_BYTES // GIB} GiB to copy")
        destination = target / remote
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, destination)


def pin(root: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with a digest for its code and model, each pinned under snapshots/ (copied once).

    A digest the caller sent is checked against the copy: a folder edited between the caller's hash
    and the copy is refused rather than served under the wrong version.
    """
    pinned = dict(spec)
    for key, digest_key in PINNED.items():
        if not spec.get(key):
            continue
        source = Path(spec[key])
        expected = spec.get(digest_key)
        try:
            digest = expected or content_digest(str(source))
            target = snapshots_dir(root) / digest / source.name
            if not target.exists():
                _pin_copy(root, source, target, digest, key)
        except FolderRefused as err:
            raise SnapshotFailed(f"could not pin {key}: {err}") from None
        except OSError as err:
            raise SnapshotFailed(f"could not pin {key} {str(source)!r}: {describe_os_error(err)}",
                                 no_space=err.errno == errno.ENOSPC) from None
        pinned[digest_key] = digest
    return pinned


def _pin_copy(root: Path, source: Path, target: Path, digest: str, key: str) -> None:
    snapshots_dir(root).mkdir(mode=0o700, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=snapshots_dir(root), prefix=".staging-"))
    try:
        copy = staging / source.name
        _same_digest(content_digest(str(source)), digest, key, source)  # a bounded walk before the copy's own
        _copy(source, copy)
        _same_digest(content_digest(str(copy), remember=False), digest, key, source)  # a fresh copy: not remembered
        target.parent.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError, OSError):  # a concurrent pin of the same content won
            os.rename(copy, target)
        if not target.exists():
            raise SnapshotFailed(f"could not pin {key} {str(source)!r} at {target}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _same_digest(found: str, digest: str, key: str, source: Path) -> None:
    if found != digest:
        raise SnapshotFailed(f"{key} {str(source)!r} changed while it was being applied "
                             f"(digest {digest[:12]} became {found[:12]}); apply the stage again")


def collect(root: Path, in_use: set[str], unfinished_too: bool = False) -> list[str]:
    """Remove the pinned copies whose digest no deployment uses any more; the digests removed.
    `unfinished_too` (at start, when no pin can be in progress): also copies a crash left half-made."""
    folder = snapshots_dir(root)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if entry.name.startswith(".staging-"):
            if unfinished_too:
                shutil.rmtree(entry, ignore_errors=True)
            continue
        if entry.name in in_use:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed
