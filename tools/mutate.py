"""`./tasks mutate [MODULE...]`: mutation testing of the decision modules, one module at a time.

For each module (a path such as components/rules.py; default: every module of the map), mutmut plants
small bugs in it one at a time and runs the tests that cover it; a mutant the tests let pass is a bug
the suite would not catch. The map module -> test files is [tool.mlcanary-mutate.modules] in
pyproject.toml, the one place it is kept.

Nothing is written into the working tree: the project (tracked and untracked, not ignored files) is
copied into a temporary folder, laid out as the installed package (components/ and policies/ become
mlcanary/components and mlcanary/policies, as pyproject's package-dir does), and mutmut works there.

Prints per module the mutants killed, the survivors (with mutmut's diff of each) and the score; a
survivor named in docs/mutation-survivors.md (an equivalent mutant, with the reason) is not counted
against the score. Exit 0 when every module reaches the goal, 1 when one does not, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
SURVIVORS_DOC = PROJECT_DIR / "docs" / "mutation-survivors.md"
GOAL = 0.90
# A mutant that makes the tests hang is caught too: the suite's time limit fails it.
CAUGHT = ("killed", "timeout")
PACKAGE_DIRS = {"components": "mlcanary/components", "policies": "mlcanary/policies"}  # pyproject's package-dir


@dataclass
class Score:
    module: str
    statuses: dict[str, str] = field(default_factory=dict)  # mutant name -> mutmut's status
    equivalent: set[str] = field(default_factory=set)  # survivors explained in the survivors doc
    seconds: float = 0.0
    error: str = ""

    def count(self, status: str) -> int:
        return sum(1 for s in self.statuses.values() if s == status)

    @property
    def survivors(self) -> list[str]:
        return [name for name, status in self.statuses.items() if status not in CAUGHT]

    @property
    def judged(self) -> int:
        return len(self.statuses) - len(self.equivalent)

    @property
    def caught(self) -> int:
        return sum(self.count(status) for status in CAUGHT)

    @property
    def ratio(self) -> float:
        return self.caught / self.judged if self.judged else 0.0


@dataclass(frozen=True)
class Target:
    tests: list[str]
    functions: list[str] | None = None  # None: the whole module; else only these top-level functions


def module_map() -> dict[str, Target]:
    """pyproject's map: a module -> its test files, or -> {tests = [...], functions = [...]}."""
    config = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    modules = config["tool"]["mlcanary-mutate"]["modules"]
    return {module: Target(list(v)) if isinstance(v, list) else Target(list(v["tests"]), list(v["functions"]))
            for module, v in modules.items()}


def leave_unmutated(path: Path, keep: list[str]) -> None:
    """Mark every top-level function and class of `path` but `keep` with mutmut's `no mutate block`
    pragma (in the temporary copy only), so only the functions in scope are mutated."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for node in ast.parse("".join(lines)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name not in keep:
            header = node.body[0].lineno - 2  # the line holding the header's colon
            if header >= node.lineno - 1:
                lines[header] = lines[header].rstrip("\n") + "  # pragma: no mutate block\n"
    path.write_text("".join(lines), encoding="utf-8")


def documented_equivalents() -> set[str]:
    """Mutant names listed in the survivors doc (each in backticks, as mutmut names them)."""
    if not SURVIVORS_DOC.is_file():
        return set()
    return set(re.findall(r"`(mlcanary\.[\w.]+__mutmut_\d+)`", SURVIVORS_DOC.read_text(encoding="utf-8")))


def project_files() -> list[Path]:
    """The files a user's checkout holds (tracked and new, not ignored), relative to the project."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=PROJECT_DIR, capture_output=True, check=True).stdout.decode()
    return [Path(p) for p in listed.split("\0") if p and (PROJECT_DIR / p).is_file()]


def installed_path(path: str) -> str:
    """components/rules.py -> mlcanary/components/rules.py (the module's place in the package)."""
    top, _, rest = path.partition("/")
    return f"{PACKAGE_DIRS[top]}/{rest}" if top in PACKAGE_DIRS else path


def make_copy(workdir: Path, module: str, target: Target) -> None:
    tops = set()
    for relative in project_files():
        copied = workdir / relative
        copied.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_DIR / relative, copied)
        tops.add(relative.parts[0])
        if relative.parts[0] in PACKAGE_DIRS:
            twin = workdir / installed_path(relative.as_posix())
            twin.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_DIR / relative, twin)
    if target.functions is not None:
        leave_unmutated(workdir / installed_path(module), target.functions)
    # mutmut runs the tests in <copy>/mutants/, which must look like the project: everything but the
    # package (which mutmut copies itself, mutated) comes along.
    also_copy = sorted(tops - {"mlcanary", "tests", "pyproject.toml"})
    section = "\n".join([
        "", "[tool.mutmut]",
        'source_paths = ["mlcanary"]',
        f"only_mutate = [{toml_string(installed_path(module))}]",
        f"also_copy = [{', '.join(map(toml_string, also_copy))}]",
        f"pytest_add_cli_args_test_selection = [{', '.join(map(toml_string, target.tests))}]",
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]',
        "use_git_change_detection = false",
        "",
    ])
    with open(workdir / "pyproject.toml", "a", encoding="utf-8") as config:
        config.write(section)


def toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mutmut(workdir: Path, *args: str, log=None) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("mutmut")), *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if log is None:
        return subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env)
    return subprocess.run(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)


DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
def diff(name):
    try:
        return get_diff_for_mutant(name, path=find_mutant(name).path)
    except Exception as err:  # noqa: BLE001 - one mutant without a diff does not hide the others'
        return f"(no diff: {err!r})"
print(json.dumps({name: diff(name) for name in sys.argv[1:]}))
"""


def diffs(workdir: Path, names: list[str]) -> dict[str, str]:
    """mutmut's diff of each mutant, in one process (`mutmut show` takes one process per mutant)."""
    if not names:
        return {}
    shown = subprocess.run([sys.executable, "-c", DIFFS, *names], cwd=workdir, capture_output=True, text=True)
    if shown.returncode != 0:
        return {name: f"(no diff: {shown.stderr.strip().splitlines()[-1:]})" for name in names}
    return json.loads(shown.stdout)


def statuses(workdir: Path) -> dict[str, str]:
    """mutmut's status of each mutant (name -> "killed", "survived", "not checked", ...)."""
    results = mutmut(workdir, "results", "--all", "true")
    found = {}
    for line in results.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name.startswith("mlcanary."):
            found[name] = status
    return found


def run_module(module: str, target: Target, children: int, keep: bool, equivalents: set[str]) -> Score:
    score = Score(module)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mlcanary-mutate-"))
    print(f"  working in {workdir}", flush=True)
    try:
        make_copy(workdir, module, target)
        for attempt in (1, 2):
            with open(workdir / "mutmut.log", "a", encoding="utf-8") as log:
                ran = mutmut(workdir, "run", "--max-children", str(children), log=log)
            score.statuses = statuses(workdir)
            # mutmut stops before testing any mutant when its stats run or its clean run of the tests
            # fails, which a timing-sensitive test can do on a loaded machine: run it once more (it
            # keeps what it measured), as a test failing only under load is rerun once.
            if attempt == 1 and ran.returncode != 0 and not any(s in CAUGHT or s == "survived"
                                                                for s in score.statuses.values()):
                print(f"  mutmut stopped before testing a mutant (exit {ran.returncode}): running it once more",
                      flush=True)
                continue
            break
        if not score.statuses:
            tail = (workdir / "mutmut.log").read_text(encoding="utf-8", errors="replace")[-3000:]
            score.error = f"mutmut produced no results (exit {ran.returncode}); the end of its log:\n{tail}"
        unchecked = sum(1 for status in score.statuses.values() if status == "not checked")
        if unchecked and not score.error:
            tail = (workdir / "mutmut.log").read_text(encoding="utf-8", errors="replace")[-3000:]
            score.error = f"mutmut checked no test against {unchecked} mutants (exit {ran.returncode}); the end of its log:\n{tail}"
        score.equivalent = {name for name in score.survivors if name in equivalents}
        for name, diff in diffs(workdir, score.survivors).items():
            note = "  [equivalent, see docs/mutation-survivors.md]" if name in score.equivalent else ""
            print(f"  # {name}: {score.statuses[name]}{note}\n    " + diff.strip().replace("\n", "\n    "))
    finally:
        score.seconds = time.monotonic() - started
        if keep:
            print(f"  kept the copy: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return score


def main(argv: list[str]) -> int:
    modules = module_map()
    parser = argparse.ArgumentParser(prog="./tasks mutate", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"one of: {', '.join(modules)} (default: all)")
    parser.add_argument("--children", type=int, default=2, help="mutants tested in parallel (default 2: the cores of a CI machine)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (to inspect with mutmut browse)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in modules]
    if unknown:
        print(f"error: MODULE {unknown[0]!r} is not a decision module; allowed: {', '.join(modules)}", file=sys.stderr)
        return 2
    if args.children < 1:
        print(f"error: --children must be at least 1, got {args.children}", file=sys.stderr)
        return 2
    equivalents = documented_equivalents()
    scores = []
    for module in args.modules or list(modules):
        target = modules[module]
        scope = f" (only {', '.join(target.functions)})" if target.functions is not None else ""
        print(f"== {module}{scope}: mutants tested against {', '.join(target.tests)}", flush=True)
        score = run_module(module, target, args.children, args.keep, equivalents)
        if score.error:
            print(f"  error: {score.error}")
        print(f"  {summary(score)}", flush=True)
        scores.append(score)
    print("\nmodule                                   killed   score  survivors (equivalent)  time")
    for s in scores:
        print(f"{s.module:40} {s.caught:3}/{s.judged:<4} {100 * s.ratio:5.1f} %  "
              f"{len(s.survivors) - len(s.equivalent):3} ({len(s.equivalent)})  {s.seconds:8.0f} s")
    failed = [s.module for s in scores if s.error or s.ratio < GOAL]
    if failed:
        print(f"below the goal of {100 * GOAL:.0f} % killed: {', '.join(failed)}")
        return 1
    return 0


def summary(score: Score) -> str:
    others = {status: score.count(status) for status in set(score.statuses.values()) - {"killed", "survived"}}
    extra = "".join(f", {n} {status}" for status, n in sorted(others.items()))
    return (f"{score.caught} of {score.judged} mutants caught ({100 * score.ratio:.1f} %), "
            f"{score.count('survived')} survived{extra}; {len(score.equivalent)} equivalent not counted; "
            f"{score.seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
