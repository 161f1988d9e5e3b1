"""The content digest of code and model folders (components/content_digest.py).

1. Conformance: the digest equals azure-ai-ml's own (`get_object_hash` with the folder's ignore file,
   directories holding no uploaded file left out, as uploads.py did with azure-ai-ml before) over a
   corpus: ignore files (.amlignore over .gitignore, negations, comments, CRLF), empty and ignored
   folders, symlinks in and out of the folder, non-ASCII names, names differing in case, files larger
   than a read chunk, a single file.
2. Remembered: an unchanged folder is not read again; any edit (even of the same size, with its old
   modification time put back) is seen; the cache is private, never trusted when others can write
   it, and safe with concurrent writers.
3. Bounded (issue 15): `/`, home directories and device trees are refused before walking; a folder
   over the limits, too deep, or with a symlink loop is refused naming it; `check` says which field.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_DIR
from mlcanary.components import content_digest as cd
from mlcanary.components.content_digest import FolderRefused, content_digest, folder_problem

SAMPLE = PROJECT_DIR / "samples" / "fraud-model"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test its own cache ($XDG_CACHE_HOME), never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "mlcanary" / "digests"


def azure_digest(path: Path) -> str:
    """The oracle: azure-ai-ml's get_object_hash, leaving out directories without an uploaded file."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_object_hash

    class UploadedFilesOnly:
        def __init__(self, ignore):
            self.ignore = ignore

        def is_file_excluded(self, candidate) -> bool:
            if self.ignore.is_file_excluded(candidate):
                return True
            candidate = Path(candidate)
            return candidate.is_dir() and not any(
                inner.is_file() and not self.ignore.is_file_excluded(inner) for inner in candidate.rglob("*"))

    root = Path(path)
    return get_object_hash(root, UploadedFilesOnly(get_ignore_file(root if root.is_dir() else root.parent)))


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return root


def corpus(base: Path) -> dict[str, Path]:
    """name -> a file or folder azure-ai-ml would hash."""
    outside = write(base / "outside", {"shared.py": "shared = 1\n", "lib/util.py": "u = 2\n"})
    cases: dict[str, Path] = {}

    def case(name: str, files: dict[str, str | bytes]) -> Path:
        cases[name] = write(base / name, files)
        return cases[name]

    case("plain", {"score.py": "def run(x): return x\n", "pkg/__init__.py": "", "pkg/mod.py": "m = 1\n",
                   "pkg/sub/deep.txt": "deep\n"})
    case("amlignore", {".amlignore": "# comment\n\n*.pyc\nbuild/\n/top-only.txt\n**/cache\ndocs/**\n  spaced.txt  \n",
                       "score.py": "s\n", "a.pyc": b"\0", "build/out.bin": b"1", "top-only.txt": "t",
                       "pkg/top-only.txt": "kept: not at the top", "pkg/cache/c.txt": "c", "docs/index.md": "d",
                       "spaced.txt": "s"})
    case("gitignore", {".gitignore": "*.log\nsecret/\n", "score.py": "s\n", "run.log": "l", "secret/key": "k"})
    case("amlignore-wins", {".amlignore": "*.txt\n", ".gitignore": "*.py\n", "score.py": "s\n", "notes.txt": "n"})
    case("negation", {".amlignore": "logs/\n!logs/keep.txt\n*.tmp\n!important.tmp\n", "score.py": "s\n",
                      "logs/a.log": "a", "logs/keep.txt": "k", "x.tmp": "x", "important.tmp": "i"})
    case("crlf-bom", {".gitignore": "\ufeff*.bak\r\nold/\r\n", "score.py": "s\n", "a.bak": "b", "old/o.py": "o"})
    case("empty-and-ignored-folders", {".gitignore": "__pycache__/\n*.pyc\n", "score.py": "s\n",
                                       "__pycache__/score.cpython-311.pyc": b"\0", "pkg/__pycache__/m.pyc": b"\0",
                                       "pkg/m.py": "m", "only-ignored/x.pyc": b"\0"})
    (cases["empty-and-ignored-folders"] / "empty").mkdir()
    (cases["empty-and-ignored-folders"] / "pkg" / "empty-too").mkdir()
    case("non-ascii", {"score.py": "s\n", "données/été.txt": "é", "日本/モデル.bin": b"\x01\x02", "ñ.py": "n"})
    case("case-ties", {"B.txt": "upper b", "a.txt": "lower a", "A.md": "upper a", "b.md": "lower b"})
    case("large", {"score.py": "s\n", "weights.bin": os.urandom(3 * 1024 * 1024 + 17)})
    links = case("symlinks", {"score.py": "s\n", "real/r.py": "r\n", ".amlignore": "ignored-link\n"})
    (links / "to-file").symlink_to("score.py")
    (links / "to-dir").symlink_to("real", target_is_directory=True)
    (links / "to-outside-file").symlink_to(outside / "shared.py")
    (links / "to-outside-dir").symlink_to(outside / "lib", target_is_directory=True)
    (links / "broken").symlink_to(links / "missing")
    (links / "ignored-link").symlink_to(outside / "shared.py")
    fifo = case("fifo", {"score.py": "s\n"})
    os.mkfifo(fifo / "pipe")
    cases["single-file"] = write(base / "single", {"model.pkl": os.urandom(1000)}) / "model.pkl"
    (base / "link-to-file").symlink_to(cases["single-file"])
    cases["symlinked-single-file"] = base / "link-to-file"
    (base / "link-to-folder").symlink_to(cases["amlignore"], target_is_directory=True)
    cases["folder-through-a-symlink"] = base / "link-to-folder"
    cases["sample-code"] = SAMPLE / "onlinescoring"
    cases["sample-model"] = SAMPLE / "v1" / "model"
    return cases


CASES = ["plain", "amlignore", "gitignore", "amlignore-wins", "negation", "crlf-bom", "empty-and-ignored-folders",
         "non-ascii", "case-ties", "large", "symlinks", "fifo", "single-file", "symlinked-single-file",
         "folder-through-a-symlink", "sample-code", "sample-model"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("name", CASES)
def test_the_digest_is_azure_ai_mls(cases, name):
    assert content_digest(cases[name], remember=False) == azure_digest(cases[name])


def test_the_corpus_tells_its_cases_apart(cases):
    """A digest that ignored names, ignore files or contents would pass no conformance case by chance."""
    digests = {name: content_digest(cases[name], remember=False) for name in CASES}
    assert digests.pop("symlinked-single-file") == digests["single-file"]  # a link is hashed as its target
    assert len(set(digests.values())) == len(digests)


def test_an_ignored_file_changes_nothing_and_a_kept_one_does(tmp_path):
    folder = write(tmp_path / "code", {".amlignore": "*.log\n", "score.py": "s\n"})
    before = content_digest(folder, remember=False)
    (folder / "run.log").write_text("noise")
    assert content_digest(folder, remember=False) == before == azure_digest(folder)
    (folder / "helper.py").write_text("h")
    assert content_digest(folder, remember=False) != before
    assert content_digest(folder, remember=False) == azure_digest(folder)


# ---- remembered -----------------------------------------------------------------------------------


def settled(folder: Path) -> Path:
    """Wait until the folder's files are older than the window in which a same-size rewrite could keep
    their timestamps (content_digest.RACY_S): only then is a digest remembered."""
    time.sleep(cd.RACY_S + 0.2)
    return folder


def no_reading(monkeypatch):
    def refuse(file):
        raise AssertionError(f"read {file}")

    monkeypatch.setattr(cd, "_open_regular", refuse)


def test_an_unchanged_folder_is_not_read_again(tmp_path, monkeypatch, private_cache):
    folder = settled(write(tmp_path / "model", {"weights.bin": os.urandom(100_000), "meta.json": "{}"}))
    first = content_digest(folder)
    assert len(list(private_cache.glob("*.json"))) == 1
    no_reading(monkeypatch)
    assert content_digest(folder) == first == azure_digest(folder)


def test_an_edit_of_the_same_size_with_its_old_time_put_back_is_seen(tmp_path, monkeypatch):
    folder = settled(write(tmp_path / "model", {"weights.bin": b"a" * 1000}))
    first = content_digest(folder)
    weights = folder / "weights.bin"
    old = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(old.st_atime_ns, old.st_mtime_ns))  # as `cp -p` or an unpacked archive would
    assert weights.stat().st_mtime_ns == old.st_mtime_ns and weights.stat().st_size == old.st_size
    second = content_digest(folder)
    assert second != first and second == azure_digest(folder)


def test_a_new_ignore_rule_is_seen(tmp_path):
    folder = settled(write(tmp_path / "code", {"score.py": "s\n", "notes.txt": "n"}))
    first = content_digest(folder)
    (folder / ".amlignore").write_text("*.txt\n")
    assert content_digest(folder) != first
    assert content_digest(folder) == azure_digest(folder)


def test_a_folder_written_just_now_is_not_remembered(tmp_path, private_cache):
    """A file rewritten within its timestamp's resolution could look unchanged: such a digest is not kept."""
    folder = write(tmp_path / "code", {"score.py": "s\n"})
    content_digest(folder)
    assert list(private_cache.glob("*.json")) == []


def test_the_cache_is_private(tmp_path, private_cache):
    content_digest(settled(write(tmp_path / "code", {"score.py": "s\n"})))
    assert stat.S_IMODE(private_cache.stat().st_mode) == 0o700


def test_a_cache_others_can_write_is_not_trusted(tmp_path, private_cache):
    folder = settled(write(tmp_path / "code", {"score.py": "s\n"}))
    right = azure_digest(folder)
    assert content_digest(folder) == right
    entry = next(private_cache.glob("*.json"))
    entry.write_text(json.dumps({"signature": json.loads(entry.read_text())["signature"], "digest": "0" * 64}))
    private_cache.chmod(0o777)  # another user could have planted that entry
    assert content_digest(folder) == right


@pytest.mark.parametrize("planted", ["not json", "{}", '{"signature": 1, "digest": 2}', "x" * 10_000])
def test_a_damaged_cache_entry_is_computed_again(tmp_path, private_cache, planted):
    folder = settled(write(tmp_path / "code", {"score.py": "s\n"}))
    right = azure_digest(folder)
    assert content_digest(folder) == right
    next(private_cache.glob("*.json")).write_text(planted)
    assert content_digest(folder) == right


def test_a_cache_entry_that_is_a_fifo_does_not_hang(tmp_path, private_cache):
    folder = settled(write(tmp_path / "code", {"score.py": "s\n"}))
    right = azure_digest(folder)
    assert content_digest(folder) == right
    entry = next(private_cache.glob("*.json"))
    entry.unlink()
    os.mkfifo(entry)
    assert content_digest(folder) == right


def _digests(folders: list[str]) -> list[str]:
    return [content_digest(folder) for _ in range(20) for folder in folders]


def test_concurrent_writers_leave_only_whole_entries(tmp_path, private_cache):
    folders = [settled(write(tmp_path / f"f{i}", {"score.py": f"{i}\n"})) for i in range(3)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_digests, [[str(f) for f in folders]] * 8)
    expected = [azure_digest(f) for f in folders] * 20
    assert all(result == expected for result in results)
    entries = sorted(p.name for p in private_cache.iterdir())
    assert len(entries) == 3 and all(name.endswith(".json") for name in entries)  # no temporary file left
    assert all(len(json.loads((private_cache / name).read_text())["digest"]) == 64 for name in entries)


def test_the_cache_keeps_the_newest_entries_only(tmp_path, private_cache, monkeypatch):
    monkeypatch.setattr(cd, "CACHE_ENTRIES", 3)
    folders = [write(tmp_path / f"f{i}", {"score.py": f"{i}\n"}) for i in range(5)]
    time.sleep(cd.RACY_S + 0.2)
    for folder in folders:
        content_digest(folder)
    assert len(list(private_cache.glob("*.json"))) == 3


# ---- bounded ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, why", [
    ("/", "is the root of the file system"),
    ("/dev", "device or kernel tree"),
    ("/proc/self", "device or kernel tree"),
    ("/sys/kernel", "device or kernel tree"),
])
def test_system_trees_are_refused_before_walking(path, why):
    started = time.perf_counter()
    with pytest.raises(FolderRefused, match=why):
        content_digest(path)
    assert why in folder_problem(path)
    assert time.perf_counter() - started < 5  # refused, not walked (walking / took over a minute)


def test_a_home_directory_is_refused(tmp_path, monkeypatch):
    home = write(tmp_path / "home" / "someone", {"score.py": "s\n"})
    monkeypatch.setenv("HOME", str(home))
    for path in (home, home.parent):
        with pytest.raises(FolderRefused, match=f"{path} is a home directory"):
            content_digest(path)


def test_a_symlink_to_the_root_inside_a_folder_is_refused(tmp_path):
    folder = write(tmp_path / "code", {"score.py": "s\n"})
    (folder / "everything").symlink_to("/", target_is_directory=True)
    with pytest.raises(FolderRefused, match="everything links to /, which is the root of the file system"):
        content_digest(folder)


def test_too_many_files_are_refused_naming_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(cd, "MAX_ENTRIES", 50)
    folder = write(tmp_path / "code", {f"f{i}.py": "" for i in range(60)})
    with pytest.raises(FolderRefused, match=f"{folder}: holds more than 50 files and folders"):
        content_digest(folder)


def test_ignored_files_do_not_count_toward_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(cd, "MAX_ENTRIES", 50)
    folder = write(tmp_path / "code", {".amlignore": "data/\n", "score.py": "s\n",
                                       **{f"data/{i}.csv": "" for i in range(200)}})
    assert content_digest(folder) == azure_digest(folder)


def test_more_than_the_size_limit_is_refused_without_reading_it(tmp_path, monkeypatch):
    folder = write(tmp_path / "model", {"score.py": "s\n"})
    with open(folder / "huge.bin", "wb") as huge:  # sparse: 21 GiB on paper, nothing on disk
        huge.truncate(21 * cd.GIB)
    no_reading(monkeypatch)
    with pytest.raises(FolderRefused, match=f"{folder}: holds more than 20 GiB"):
        content_digest(folder)


def test_nesting_deeper_than_the_limit_is_refused(tmp_path):
    deep = tmp_path / "code"
    leaf = deep.joinpath(*[f"d{i}" for i in range(cd.MAX_DEPTH + 1)])
    write(leaf, {"x.py": "x"})
    with pytest.raises(FolderRefused, match=f"nested more than {cd.MAX_DEPTH} folders deep"):
        content_digest(deep)


def test_a_symlink_loop_is_refused_naming_it(tmp_path):
    folder = write(tmp_path / "code", {"score.py": "s\n", "pkg/m.py": "m"})
    (folder / "pkg" / "back").symlink_to("..", target_is_directory=True)
    with pytest.raises(FolderRefused, match="pkg/back leads back into a folder that holds it"):
        content_digest(folder)


def test_a_self_referencing_symlink_is_refused(tmp_path):
    folder = write(tmp_path / "code", {"score.py": "s\n"})
    (folder / "loop").symlink_to("loop")
    with pytest.raises(FolderRefused, match="loop is a symlink loop"):
        content_digest(folder)


def test_a_fifo_as_the_model_is_refused(tmp_path):
    os.mkfifo(tmp_path / "model")
    with pytest.raises(FolderRefused, match="not a file or folder"):
        content_digest(tmp_path / "model")


def test_a_name_that_is_not_utf8_is_refused(tmp_path):
    folder = write(tmp_path / "code", {"score.py": "s\n"})
    (folder / os.fsdecode(b"bad-\xff.py")).write_text("b")
    with pytest.raises(FolderRefused, match="the name is not valid UTF-8"):
        content_digest(folder)


def check(tmp_path, code: str | Path) -> subprocess.CompletedProcess:
    stage = tmp_path / "stage.yaml"
    stage.write_text(yaml.safe_dump({"config": {"mlcanary:target": "local", "mlcanary:endpoint": {
        "name": "digest-test", "authMode": "key", "traffic": {"blue": 100},
        "deployments": {"blue": {"model": str(SAMPLE / "v1" / "model"), "code": str(code),
                                 "scoringScript": "score.py", "instanceCount": 1}}}}}))
    return subprocess.run([sys.executable, "-m", "mlcanary.cli", "check", str(stage)], cwd=PROJECT_DIR,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path / "home")})


def test_check_names_the_field_of_a_home_directory_code_folder(tmp_path):
    home = write(tmp_path / "home", {"score.py": "def init(): pass\ndef run(x): return x\n"})
    done = check(tmp_path, home)
    assert done.returncode == 2, done.stderr
    assert (f"mlcanary:endpoint.deployments.blue.code: {home} is a home directory" in done.stderr), done.stderr
    assert "Traceback" not in done.stderr


def test_check_names_the_field_of_a_code_folder_over_the_limit(tmp_path):
    code = write(tmp_path / "code", {"score.py": "def init(): pass\ndef run(x): return x\n"})
    with open(code / "huge.bin", "wb") as huge:
        huge.truncate(21 * cd.GIB)
    done = check(tmp_path, code)
    assert done.returncode == 2, done.stderr
    assert f"mlcanary:endpoint.deployments.blue.code: {code}: holds more than 20 GiB" in done.stderr
    assert "Traceback" not in done.stderr
