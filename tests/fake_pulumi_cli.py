"""A stand-in for the `pulumi` binary (which cannot be installed here), for the Automation API to drive.

It keeps the rules the real CLI applies to stack config and updates, read from its sources
(github.com/pulumi/pulumi):

- `config set-all --path --plaintext k=v` (what `Stack.set_all_config(..., path=True)` runs): the key
  is a property path (`sdk/go/common/resource/properties_path.go`, `parsePropertyPath`: splits on
  every `.`, `[n]` is an array index, `["a.b"]` a quoted name) and the value of a nested key is
  coerced (`sdk/go/common/resource/config/object.go`, `coerce`: "true"/"false" -> bool, an integer
  without a leading zero -> int) (`config/map.go`, `Map.Set`).
- `config set-all --json` (what `Stack.set_all_config_json` runs) takes the `pulumi config --json`
  shape; a value with `objectValue` is stored as the object parsed from `value`, types kept
  (`pkg/cmd/pulumi/config/config.go`, `newConfigSetAllCmd`); `--json` with `--path` is refused.
- An update holds the stack's lock; a second update or refresh meanwhile fails with the DIY
  backend's "the stack is currently locked by" message, which the Automation API turns into
  `ConcurrentUpdateError` (`sdk/python/lib/pulumi/automation/errors.py`).

The stack's config lives in `<stackConfigDir>/Pulumi.<stack>.yaml` like the real file. `up` takes
FAKE_PULUMI_UP_SECONDS to run and exports the traffic its config asks for, unless
FAKE_PULUMI_LIVE_TRAFFIC (JSON) says what Azure really has (a second actor moved it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

VERSION = "v3.272.0"
CONFLICT = "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete the lock file"


def fail(message: str, code: int = 255) -> None:
    sys.stderr.write(message + "\n")
    sys.exit(code)


# --- pulumi's property paths and coercion ---------------------------------------------------------

def parse_path(path: str) -> list:
    """`parsePropertyPath`, strict mode: names up to the next '.' or '[', [n] indices, ["quoted"] names."""
    elements: list = []
    if path.startswith("."):
        fail("error: invalid config key path: expected property path to start with a name or index")
    while path:
        if path[0] == ".":
            path = path[1:]
            if not path or path[0] == "[":
                fail("error: invalid config key path: expected property name after '.'")
        elif path[0] == "[":
            if len(path) > 1 and path[1] == '"':
                end = path.index('"', 2)
                elements.append(path[2:end])
                path = path[end + 2:]
            else:
                end = path.index("]")
                elements.append(int(path[1:end]))
                path = path[end + 1:]
        else:
            i = 0
            while i < len(path) and path[i] not in ".[":
                i += 1
            elements.append(path[:i])
            path = path[i:]
    return elements


def coerce(value: str):
    if value in ("true", "false"):
        return value == "true"
    if len(value) > 1 and value[0] == "0":
        return value
    try:
        return int(value)
    except ValueError:
        return value


def set_path(config: dict, key: str, value: str) -> None:
    namespace, _, name = key.partition(":")
    path = parse_path(name)
    root_key = f"{namespace}:{path[0]}"
    if len(path) == 1:
        config[root_key] = value
        return
    container = config.get(root_key)
    if not isinstance(container, (dict, list)):
        container = [] if isinstance(path[1], int) else {}
        config[root_key] = container
    for here, after in zip(path[1:-1], path[2:]):
        fresh = [] if isinstance(after, int) else {}
        if isinstance(container, list):
            while len(container) <= here:
                container.append(None)
            container[here] = container[here] if isinstance(container[here], (dict, list)) else fresh
            container = container[here]
        else:
            container = container.setdefault(here, fresh)
    last = path[-1]
    if isinstance(container, list):
        while len(container) <= last:
            container.append(None)
    container[last] = coerce(value)


def remove_path(config: dict, key: str) -> None:
    namespace, _, name = key.partition(":")
    path = parse_path(name)
    root_key = f"{namespace}:{path[0]}"
    if len(path) == 1:
        config.pop(root_key, None)
        return
    container = config.get(root_key)
    for here in path[1:-1]:
        container = container.get(here) if isinstance(container, dict) else None
    if isinstance(container, dict):
        container.pop(path[-1], None)


# --- the stack's files ------------------------------------------------------------------------------

def stack_file(stack: str) -> Path:
    project = yaml.safe_load(Path("Pulumi.yaml").read_text())
    return Path(project.get("stackConfigDir", ".")) / f"Pulumi.{stack}.yaml"


def read_config(stack: str) -> dict:
    path = stack_file(stack)
    document = yaml.safe_load(path.read_text()) if path.exists() else None
    return (document or {}).get("config") or {}


def write_config(stack: str, config: dict) -> None:
    path = stack_file(stack)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"config": config}, sort_keys=False))


def state_dir(stack: str) -> Path:
    folder = Path(os.environ["FAKE_PULUMI_STATE"]) / stack
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log(stack: str, entry: dict) -> None:
    with (state_dir(stack) / "log.jsonl").open("a") as out:
        out.write(json.dumps(entry) + "\n")


def lock(stack: str) -> Path:
    folder = state_dir(stack) / "lock"
    try:
        folder.mkdir()
    except FileExistsError:
        fail(CONFLICT)
    (folder / "pid").write_text(str(os.getpid()))
    return folder


def unlock(folder: Path) -> None:
    (folder / "pid").unlink(missing_ok=True)
    folder.rmdir()


# --- commands ---------------------------------------------------------------------------------------

def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def options(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def config_json(config: dict) -> dict:
    shown = {}
    for key, value in config.items():
        if isinstance(value, (dict, list)):
            shown[key] = {"value": json.dumps(value), "objectValue": value, "secret": False}
        else:
            shown[key] = {"value": value if isinstance(value, str) else json.dumps(value), "secret": False}
    return shown


def main(args: list[str]) -> None:
    args = [a for a in args if a != "--non-interactive"]
    stack = option(args, "--stack") or "dev"
    if args[:1] == ["version"]:
        print(VERSION)
    elif args[:2] == ["stack", "select"]:
        if not stack_file(stack).exists():
            fail(f"error: no stack named '{stack}' found")
    elif args[:2] == ["config", "set-all"]:
        config = read_config(stack)
        path = "--path" in args
        raw = option(args, "--json")
        if raw is not None:
            if path or "--plaintext" in args or "--secret" in args:
                fail("error: the --json option cannot be used with the --plaintext, --secret or --path options")
            for key, entry in json.loads(raw).items():
                if entry.get("value") is None:
                    fail(f'error: value for --json object key "{key}" is nil')
                config[key] = json.loads(entry["value"]) if entry.get("objectValue") is not None else entry["value"]
        for pair in options(args, "--plaintext"):
            key, _, value = pair.partition("=")
            if path:
                set_path(config, key, value)
            else:
                config[key] = value
        write_config(stack, config)
        log(stack, {"command": "config set-all", "path": path, "json": raw is not None})
    elif args[:2] in (["config", "rm"], ["config", "rm-all"]):
        config = read_config(stack)
        keys = [a for a in args[2:] if not a.startswith("--") and a != stack]
        for key in keys:
            if "--path" in args:
                remove_path(config, key)
            else:
                config.pop(key, None)
        write_config(stack, config)
    elif args[:1] == ["config"] and "--json" in args:
        print(json.dumps(config_json(read_config(stack))))
    elif args[:1] in (["up"], ["refresh"]):
        held = lock(stack)
        stopped = []
        signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
        try:
            deadline = time.monotonic() + float(os.environ.get("FAKE_PULUMI_UP_SECONDS", "0"))
            while time.monotonic() < deadline and not stopped:
                time.sleep(0.05)
            if stopped:
                fail("error: update canceled")
            config = read_config(stack)
            endpoint = config.get("mlcanary:endpoint") or {}
            live = os.environ.get("FAKE_PULUMI_LIVE_TRAFFIC")
            outputs = {"traffic": json.loads(live) if live else endpoint.get("traffic", {}),
                       "mirrorTraffic": endpoint.get("mirrorTraffic", {})}
            (state_dir(stack) / "outputs.json").write_text(json.dumps(outputs))
            log(stack, {"command": args[0], "refresh": "--refresh" in args, "message": option(args, "--message"),
                        "config": config})
            print(f"Updating ({stack}): done")
        finally:
            unlock(held)
    elif args[:2] == ["stack", "output"]:
        path = state_dir(stack) / "outputs.json"
        print(path.read_text() if path.exists() else "{}")
    elif args[:2] == ["stack", "history"]:
        print(json.dumps([{"kind": "update", "startTime": "2026-11-30T10:00:00.000Z", "message": "",
                           "environment": {}, "config": {}, "result": "succeeded",
                           "endTime": "2026-11-30T10:00:01.000Z", "version": 1}]))
    else:
        fail(f"fake pulumi: unsupported command {args}", 2)


if __name__ == "__main__":
    main(sys.argv[1:])
