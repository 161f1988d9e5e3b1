"""`mlcanary rollout status|pause|resume|promote|abort|history ENDPOINT`: watch and steer a running
rollout from another terminal.

As `kubectl argo rollouts`, the verbs never talk to the running process: they write intent into the
endpoint's hold document (local_runtime/lease.py) and the rollout acts on it at its next tick
(rollout/steering.py); each verb then waits (at most --timeout) to see it acted. A verb that finds
the rollout's process gone says so; `abort` then restores the baseline itself.

`mlcanary rollout STAGE_FILE ...` (rollout_cli.py) stays the group's default command `run`
(click-default-group), imported only when it runs or --help lists it: it needs the rollout spec
(pydantic), which the verbs do not (tests/test_cli_imports.py). Its options that concern holding and steering the
endpoint (--force, --notify, --confirm-promotion) and the steering they make for the runner are here
too (steering_options, steering_for).

Exit codes: 0 done (or requested and seen); 1 no rollout to steer, the rollout died (pause, resume,
promote), or it did not act within --timeout; 2 bad input (endpoint name, a hold file that is not
one, both --state-dir and --stack).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from mlcanary.cli_support import LazyDefaultGroup, state_dir_option

ACK_POLL_S = 0.2


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(cls=LazyDefaultGroup, lazy_commands={"run": "mlcanary.rollout_cli:rollout"}, default="run",
             default_if_no_args=False,
             context_settings={"ignore_unknown_options": True})
def rollout() -> None:
    """Promote a deployment step by step (`mlcanary rollout STAGE_FILE ...`, the default command `run`),
    and watch or steer a running rollout from another terminal by its ENDPOINT.

    The rollout holds its endpoint from its first change to its end; the verbs write intent it reads
    at its next tick: `status` (--watch, --format json), `pause` (hold the step: judging goes on, a
    failure still rolls back, nothing is promoted), `resume`, `promote` (one step now, or --full),
    `abort` (back to the baseline; the rollout exits 1), `history` (past rollouts of the endpoint).
    Local target: --state-dir (as other local commands); azure target: --stack NAME.
    """


stack_option = click.option("--stack", help="azure target: the Pulumi stack the rollout runs on (its hold is kept in "
                                           "$XDG_STATE_HOME/mlcanary/stacks/STACK).")
timeout_option = click.option("--timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
                              help="Seconds to wait for the rollout to act on the request (0: do not wait).")
endpoint_argument = click.argument("endpoint")


def _directory(state_dir: Path | None, stack: str | None) -> Path:
    from mlcanary.local_runtime import lease, paths

    if state_dir is not None and stack:
        _fail("give --state-dir (local target) or --stack (azure target), not both", 2)
    return lease.stack_lease_dir(stack) if stack else lease.lease_dir(paths.state_dir(state_dir))


def _read(directory: Path, endpoint: str) -> dict[str, Any] | None:
    from mlcanary.local_runtime import lease

    try:
        lease.check_endpoint_name(endpoint)
        return lease.read(directory, endpoint)
    except (ValueError, lease.LeaseFileError) as err:
        _fail(str(err), 2)


def state_of(doc: dict[str, Any]) -> str:
    """running, paused, died or the ended rollout's outcome."""
    from mlcanary.local_runtime import lease

    if not lease.is_held(doc):
        return str(doc.get("outcome"))
    if not lease.holder_alive(doc):
        return "died"
    return "paused" if doc.get("paused") else "running"


# --- status -------------------------------------------------------------------------------------------

def _shares(traffic: dict | None) -> str:
    return ", ".join(f"{n} {s}" for n, s in (traffic or {}).items()) or "none"


def _clock(at: Any) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(float(at)))
    except (TypeError, ValueError):
        return "-"


def status_json(doc: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    now = now or float(doc.get("endedAt") or time.time())
    shown = {k: v for k, v in doc.items() if k not in ("rollbackStage", "intent")}
    return {**shown, "state": state_of(doc), "inStepS": round(now - float(doc.get("stepSince") or now), 1),
            "heartbeatAgeS": round(now - float(doc.get("heartbeat") or now), 1), "intent": doc.get("intent") or {}}


def status_lines(doc: dict[str, Any], now: float | None = None) -> list[str]:
    info = status_json(doc, now)
    state, holder = info["state"], doc.get("holder") or {}
    steps = (doc.get("plan") or {}).get("steps") or []
    index = doc.get("stepIndex")
    position = f"step {index + 1}/{len(steps)}" if isinstance(index, int) and index >= 0 else "start"
    lines = [f"rollout {doc.get('id')} of {doc.get('target')} on {doc.get('endpoint')} (baseline {doc.get('baseline')}): "
             f"{state.upper()}",
             f"  {position}: {doc.get('step') or 'start'} for {info['inStepS']:.0f} s; live {_shares(doc.get('traffic'))}"
             + (f"; mirror {_shares(doc.get('mirror'))}" if doc.get("mirror") else "")]
    for name, counts in sorted((doc.get("counts") or {}).items()):
        rate = counts.get("errorRate")
        p99 = counts.get("p99Ms")
        lines.append(f"  {name:>12}: {counts.get('requests', 0)} requests, {counts.get('errors', 0)} errors"
                     + (f" ({100 * rate:.2f} %)" if rate is not None else "")
                     + (f", p99 {p99:.1f} ms" if p99 is not None else ""))
    judge = doc.get("judge") or {}
    if judge:
        lines.append("  judge: " + ", ".join(f"{k} {v}" for k, v in judge.items()))
    lines += answer_lines(doc.get("answers"))
    from mlcanary.local_runtime import lease

    if state == "died" and lease.is_held(doc):
        lines.append(f"  the rollout's process (pid {holder.get('pid')} on {holder.get('host')}) is gone; last heartbeat "
                     f"{info['heartbeatAgeS']:.0f} s ago. Traffic stays as it left it, unjudged: "
                     f"`mlcanary rollout abort {doc.get('endpoint')}` puts the baseline back"
                     + (f", or resume it with --resume --record {doc.get('record')}" if doc.get("record") else ""))
    elif state in ("running", "paused"):
        lines.append(f"  next: {doc.get('next') or doc.get('status') or '-'}")
        lines.append(f"  pid {holder.get('pid')} on {holder.get('host')}, user {holder.get('user')}; heartbeat "
                     f"{info['heartbeatAgeS']:.0f} s ago; record {doc.get('record') or '-'}")
    else:
        taken = doc.get("takenOverBy") or {}
        lines.append(f"  ended {_clock(doc.get('endedAt'))}: {doc.get('message') or ''}"
                     + (f" (pid {taken.get('pid')}, user {taken.get('user')})" if taken else ""))
        lines.append(f"  record {doc.get('record') or '-'}")
    for intervention in doc.get("interventions") or []:
        lines.append(f"  {_clock(intervention.get('at'))} {intervention.get('action')} by {intervention.get('user')} "
                     f"at step {intervention.get('step')}")
    return lines


def answer_lines(answers: Any) -> list[str]:
    """The answer judge's part of the status (rollout/answer_judge.py AnswerJudge.status)."""
    if answers is None:
        return []
    try:
        return _answer_lines(answers)
    except (AttributeError, TypeError, ValueError, KeyError):  # the hold file is input like any other
        return [f"  answers: not readable in the hold document ({str(answers)[:80]})"]


def _answer_lines(answers: dict[str, Any]) -> list[str]:
    compare = answers.get("compare") or {}
    threshold = answers.get("threshold")
    lines = []
    compared, agreed, share = answers.get("compared"), answers.get("agreed"), answers.get("shareAgreed")
    head = f"  answers at {compare.get('path')} (within {compare.get('tolerance')}): "
    disagreement = (f"; e(disagreement) {answers.get('eDisagreement')} of {threshold:g} "
                    f"(allowed {100 * (compare.get('maxDisagreement') or 0):g} % disagreeing)")
    if compared:
        lines.append(head + f"{agreed} of {compared} agreed ({100 * share:.1f} %) in the mirror phase"
                     + (f", {answers.get('stepCompared')} in this step" if answers.get("mirrorStep") else "")
                     + disagreement)
    else:
        lines.append(head + ("none compared yet" + disagreement if answers.get("mirrorStep") else
                             "no mirrored pair was compared (no mirror phase)"))
    if not answers.get("mirrorStep"):  # the distribution test judges live steps only
        if answers.get("eShift") is not None:
            distance = answers.get("shiftDistance")
            lines.append(f"  output distribution: e(output shift) {answers['eShift']} of {threshold:g}"
                         + (f", distance {distance:.3f}" if distance is not None else "")
                         + f", {answers.get('stepTested', 0)} target outputs tested in this step")
        else:
            lines.append(f"  output distribution: {answers.get('referenceOutputs', 0)} of the "
                         f"{answers.get('referenceNeeded')} baseline outputs its reference needs; the test starts then")
    if answers.get("lastDisagreement"):
        lines.append(f"  last disagreement: {answers['lastDisagreement']}")
    if answers.get("lastNotCompared"):
        lines.append(f"  last not compared: {answers['lastNotCompared']}")
    if answers.get("stepUnpaired"):
        lines.append(f"  {answers['stepUnpaired']} answers of the target found no partner to pair with in this step: "
                     "judged on their distribution")
    if answers.get("pending"):
        lines.append(f"  answers pending: {answers['pending']} (the step waits for them)")
    return lines


@rollout.command("status")
@endpoint_argument
@click.option("--watch", is_flag=True, help="Keep showing it, once a second, until the rollout ends (Ctrl-C stops).")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: the rollout's state document (with --watch: one JSON line per change).")
@stack_option
@state_dir_option
def status(endpoint: str, watch: bool, output_format: str, stack: str | None, state_dir: Path | None) -> None:
    """Show the rollout of ENDPOINT: step, traffic, requests and errors per side, the judge's state and
    e-values, time in the step, what happens next; whether its process died.

    Exit codes: 0 shown; 1 no rollout has held ENDPOINT here; 2 bad input."""
    directory = _directory(state_dir, stack)
    live = None
    if watch and output_format == "text" and sys.stdout.isatty():
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        live = Live(console=Console(), auto_refresh=False)  # redrawn in place; the last frame stays
        live.start()
    last = None
    try:
        while True:
            doc = _read(directory, endpoint)
            if doc is None:
                _fail(f"no rollout has held endpoint {endpoint} in {directory}")
            info = status_json(doc)
            shown = json.dumps(info, indent=None if watch else 2, default=str) if output_format == "json" \
                else "\n".join(status_lines(doc))
            comparable = {k: v for k, v in info.items() if k not in ("heartbeat", "heartbeatAgeS", "inStepS")}
            if live is not None:
                live.update(Text(shown), refresh=True)
            elif comparable != last or not watch:
                click.echo(shown)
                last = comparable
            if not watch or info["state"] not in ("running", "paused"):
                return
            time.sleep(1.0)
    except KeyboardInterrupt:
        return
    finally:
        if live is not None:
            live.stop()


# --- the intent verbs -----------------------------------------------------------------------------------

def _steer(directory: Path, endpoint: str, verb: str, change, acted, timeout: float, done: str) -> None:
    """Write intent under the hold's lock, then wait until the rollout shows it acted."""
    from mlcanary.local_runtime import lease

    if _read(directory, endpoint) is None:  # also validates the name and the file
        _fail(f"no rollout has held endpoint {endpoint} in {directory}; nothing to {verb}")
    with lease.locked(directory, endpoint) as held:
        doc = held.doc
        if doc is None or not lease.is_held(doc):
            last = f" (the last one, {doc.get('id')}, ended: {doc.get('outcome')})" if doc else ""
            _fail(f"no rollout is running on endpoint {endpoint}{last}; nothing to {verb}")
        if not lease.holder_alive(doc):
            _fail(f"{lease.describe(doc)} died (its process is gone); traffic is as it left it: "
                  f"`mlcanary rollout abort {endpoint}` puts the baseline back")
        intent = dict(doc.get("intent") or {})
        change(intent, doc)
        held.save({**doc, "intent": intent})
        rollout_id = doc["id"]
    click.echo(f"{verb} requested: rollout {rollout_id} acts on it at its next tick")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = lease.read(directory, endpoint)
        if doc is None or doc.get("id") != rollout_id:
            return
        if acted(doc):
            click.echo(done.format(**{k: v for k, v in doc.items() if isinstance(k, str)}))
            return
        if not lease.is_held(doc):
            click.echo(f"the rollout ended before it acted on it: {doc.get('outcome')}: {doc.get('message')}")
            return
        time.sleep(ACK_POLL_S)
    if timeout:
        _fail(f"rollout {rollout_id} did not act on `{verb}` within {timeout:g} s; the request stays and is acted on "
              "at its next tick")


def _author() -> dict[str, Any]:
    from mlcanary.rollout.steering import intent_author

    return intent_author()


@rollout.command("pause")
@endpoint_argument
@timeout_option
@stack_option
@state_dir_option
def pause(endpoint: str, timeout: float, stack: str | None, state_dir: Path | None) -> None:
    """Hold the rollout of ENDPOINT at its step: judging goes on and a failure still rolls back, but
    nothing is promoted (nor halted for want of data) until `resume`."""
    _set_paused(True, endpoint, timeout, stack, state_dir)


@rollout.command("resume")
@endpoint_argument
@timeout_option
@stack_option
@state_dir_option
def resume(endpoint: str, timeout: float, stack: str | None, state_dir: Path | None) -> None:
    """Let a paused rollout of ENDPOINT promote again when its step passes."""
    _set_paused(False, endpoint, timeout, stack, state_dir)


def _set_paused(paused: bool, endpoint: str, timeout: float, stack: str | None, state_dir: Path | None) -> None:
    """`pause` and `resume`: the intent's `paused` with who asked, acted on when the rollout shows it."""
    verb, by = ("pause", "pausedBy") if paused else ("resume", "resumedBy")

    def change(intent, _doc):
        intent.update({"paused": paused, by: _author()})

    _steer(_directory(state_dir, stack), endpoint, verb, change, lambda d: d.get("paused") is paused, timeout,
           f"{verb}d at step {{step}}")


@rollout.command("promote")
@endpoint_argument
@click.option("--full", is_flag=True, help="Skip the remaining steps and judging: straight to 100 % (a human override).")
@timeout_option
@stack_option
@state_dir_option
def promote(endpoint: str, full: bool, timeout: float, stack: str | None, state_dir: Path | None) -> None:
    """Promote the current step of ENDPOINT's rollout now (it moves to the next step), or with --full to
    the last step. Recorded with who ($USER) and when. A paused rollout stays paused at the next step."""
    seq = {}

    def change(intent, doc):
        previous = (intent.get("promote") or {}).get("seq", 0)
        seq["value"] = max(int(previous), int(doc.get("promotionsSeen") or 0)) + 1
        intent["promote"] = {"seq": seq["value"], "full": full, **_author()}

    _steer(_directory(state_dir, stack), endpoint, "promote --full" if full else "promote", change,
           lambda d: int(d.get("promotionsSeen") or 0) >= seq["value"], timeout, "promoted step {step}")


@rollout.command("abort")
@endpoint_argument
@timeout_option
@stack_option
@state_dir_option
def abort(endpoint: str, timeout: float, stack: str | None, state_dir: Path | None) -> None:
    """Put ENDPOINT back on the rollout's baseline now; the running rollout exits 1 saying it was aborted,
    from which step. A rollout whose process died is aborted here: this command applies the baseline."""
    from mlcanary.local_runtime import lease

    directory = _directory(state_dir, stack)
    doc = _read(directory, endpoint)
    if doc is not None and lease.is_held(doc) and not lease.holder_alive(doc):
        _abort_dead(directory, endpoint, stack, state_dir)
        return

    def change(intent, _doc):
        intent["abort"] = _author()

    _steer(directory, endpoint, "abort", change, lambda d: not lease.is_held(d), max(timeout, 0.0),
           "aborted: {message}")


def _abort_dead(directory: Path, endpoint: str, stack: str | None, state_dir: Path | None) -> None:
    """Adopt the dead rollout's hold and apply its rollback stage (the baseline live, the target dark)."""
    from mlcanary.components.spec import NAMESPACE, SpecError, load_stack_config
    from mlcanary.components.stage_file import namespaced
    from mlcanary.local_runtime import lease
    from mlcanary.rollout.appliers import ApplyError
    from mlcanary.rollout.plan import Step

    try:
        doc = lease.adopt(directory, endpoint)
    except lease.EndpointHeld as err:
        _fail(str(err))
    stage = doc.get("rollbackStage") or {}
    try:
        config = stage["config"]
        spec = load_stack_config(namespaced(config, NAMESPACE), Path(stage["projectDir"]))
    except (KeyError, TypeError, SpecError) as err:
        lease.release(directory, endpoint, doc["id"])
        _fail(f"{lease.document_file(directory, endpoint)}: rollbackStage is not a valid stage ({err}); nothing was "
              "changed: put the baseline back with `mlcanary local up` of your baseline stage", 2)
    step = Step("rollback", "live", 0, config, spec)
    click.echo(f"{lease.describe(doc)} died; restoring its baseline: live {_shares(step.traffic)}")
    try:
        applier = _applier(spec, stack, state_dir, Path(stage["projectDir"]))
        applier.apply(step)
    except ApplyError as err:
        lease.release(directory, endpoint, doc["id"])
        _fail(f"restoring the baseline failed: {err}")
    message = (f"the rollout died at step {doc.get('step') or 'start'}; aborted by {_author()['user']}: "
               f"the baseline is back (live {_shares(step.traffic)})")
    lease.finish(directory, endpoint, doc["id"], "aborted", message,
                 interventions=[*(doc.get("interventions") or []), {**_author(), "action": "abort", "step": doc.get("step")}])
    click.echo(f"aborted: {message}")


def _applier(spec, stack: str | None, state_dir: Path | None, project_dir: Path):
    from mlcanary.rollout.appliers import ApplyError, LocalApplier, PulumiApplier

    if spec.target == "local":
        from mlcanary.cli_support import runtime_client

        return LocalApplier(runtime_client(state_dir))
    if not stack:
        raise ApplyError("an azure-target rollout's baseline is restored through its Pulumi stack: give --stack")
    return PulumiApplier.for_stack(stack, project_dir, project_dir / "policies", None)


# --- history ----------------------------------------------------------------------------------------------

@rollout.command("history")
@endpoint_argument
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: an array of the rollouts, oldest first, as `status --format json` shows one.")
@stack_option
@state_dir_option
def history(endpoint: str, output_format: str, stack: str | None, state_dir: Path | None) -> None:
    """Past rollouts of ENDPOINT, oldest first: start, end, outcome, last step, who intervened, record."""
    from mlcanary.local_runtime import lease

    directory = _directory(state_dir, stack)
    current = _read(directory, endpoint)
    try:
        entries = lease.read_history(directory, endpoint)
    except lease.LeaseFileError as err:
        _fail(str(err), 2)
    if current is not None and lease.is_held(current):
        entries.append({**{k: current.get(k) for k in ("id", "startedAt", "step", "record", "interventions",
                                                       "target", "baseline", "holder")},
                        "outcome": state_of(current), "endedAt": None})
    if output_format == "json":
        click.echo(json.dumps(entries, indent=2, default=str))
        return
    if not entries:
        click.echo(f"no rollout has run on endpoint {endpoint} in {directory}")
        return
    for entry in entries:
        who = sorted({f"{i.get('action')} by {i.get('user')}" for i in entry.get("interventions") or []})
        taken = entry.get("takenOverBy") or {}
        click.echo(f"{entry.get('id')}: {entry.get('outcome')} at {entry.get('step') or 'start'}; "
                   f"{_day(entry.get('startedAt'))} -> {_day(entry.get('endedAt')) if entry.get('endedAt') else 'now'}; "
                   f"{entry.get('baseline')} -> {entry.get('target')}"
                   + (f"; {', '.join(who)}" if who else "")
                   + (f"; taken over by {taken.get('writer')}" if taken else "")
                   + f"; record {entry.get('record') or '-'}")


def _day(at: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(at)))
    except (TypeError, ValueError):
        return "-"


# --- the steering of `mlcanary rollout STAGE_FILE` -----------------------------------------------------------

_META_KEY = "mlcanary.steering"


def _urls(option: str, values: Any) -> Any:
    from mlcanary.components.rollout_spec import webhook_url_problem

    for url in [values] if isinstance(values, str) else values or ():
        problem = webhook_url_problem(url)
        if problem:
            click.echo(f"error: {option}: {problem}", err=True)
            sys.exit(2)
    return values


def steering_options(command):
    """Decorate the rollout command: its callback gets the same arguments as before."""

    @click.option("--force", "steer_force", is_flag=True,
                  help="Take the endpoint over from another rollout that holds it (recorded as a takeover; "
                       "that rollout stops with exit 4 without changing anything).")
    @click.option("--notify", "steer_notify", multiple=True, metavar="URL",
                  callback=lambda _c, _p, v: _urls("--notify", v),
                  help="Repeatable: POST a JSON event per decision here (rollout id, endpoint, step, traffic, "
                       "judge values, outcome). A failing webhook is reported, never stops the rollout.")
    @click.option("--confirm-promotion", "steer_confirm", metavar="URL",
                  callback=lambda _c, _p, v: _urls("--confirm-promotion", v) if v else v,
                  help="POST before each promotion; anything but a 2xx answer holds the step (halted after "
                       "--max-hold intervals).")
    @functools.wraps(command)
    def wrapped(*args, steer_force: bool, steer_notify: tuple[str, ...], steer_confirm: str | None, **kwargs):
        click.get_current_context().meta[_META_KEY] = {
            "force": steer_force, "notify": list(steer_notify), "confirm": steer_confirm}
        if not (steer_force or kwargs.get("plan_only") or kwargs.get("write_stages") or kwargs.get("stack")):
            _refuse_at_once(kwargs.get("stage_file"), kwargs.get("state_dir"))
        return command(*args, **kwargs)

    return wrapped


def _refuse_at_once(stage_file: Path | None, state_dir: Path | None) -> None:
    """Another rollout's endpoint (local target) is refused before the plan's gate runs. Only a look at
    the endpoint's name: a stage file that cannot be read is left to the run's own validation."""
    from mlcanary.components.spec import NAMESPACE
    from mlcanary.components.stage_file import StageFileError, namespaced, read_stage_file
    from mlcanary.local_runtime import lease, paths

    try:
        config = namespaced(read_stage_file(stage_file), NAMESPACE)
        name = config["endpoint"]["name"]
        if config.get("target", "azure") != "local" or not isinstance(name, str):
            return
        lease.check_endpoint_name(name)
    except (StageFileError, OSError, KeyError, TypeError, ValueError):
        return
    try:
        lease.refuse_at_once(paths.state_dir(state_dir), name, force=False)
    except lease.EndpointHeld as err:
        _fail(str(err))


def steering_for(plan: Any, applier: Any, client: Any, stack: str | None, record: Path | None,
                 rollout_id: str | None = None):
    """The runner's steering: the endpoint's hold (local: in the runtime's state directory; azure: in a
    user state folder keyed by the stack), the webhooks of the flags or of `mlcanary:rollout`."""
    from mlcanary.local_runtime import lease
    from mlcanary.rollout.notify import Confirmer, Notifier
    from mlcanary.rollout.steering import HeldSteering

    ctx = click.get_current_context(silent=True)
    chosen = (ctx.meta.get(_META_KEY) if ctx else None) or {}
    config = plan.start.spec.rollout
    notify = chosen.get("notify") or (config.notify if config else None) or []
    confirm = chosen.get("confirm") or (config.confirm_promotion if config else None)
    if client is not None:
        directory, lock_root = lease.lease_dir(client.root), client.root
    else:
        directory, lock_root = lease.stack_lease_dir(stack or "default"), None
    steering = HeldSteering(directory, plan, applier, record=record, rollout_id=rollout_id, force=bool(chosen.get("force")),
                            lock_root=lock_root, notifier=Notifier(notify) if notify else None,
                            confirmer=Confirmer(confirm) if confirm else None,
                            resources=_resource_watch(plan, client), reader=_azure_reader(plan, client))
    refused = steering.begin()  # before the live display: a held endpoint is an error line, exit 1
    if refused is not None:
        click.echo(f"error: {refused.message}", err=True)
        sys.exit(refused.exit_code)
    return steering


def _resource_watch(plan: Any, client: Any):
    """Resource rules: on the local target from the workers' processes, on Azure from the deployments'
    utilisation metrics; a rule that cannot be judged is refused (exit 2) rather than silently passed."""
    import time

    from mlcanary.rollout.resources import LocalResources, ResourceWatch

    rules = tuple(rule for rule in plan.options.rules if rule.is_resource)
    if not rules:
        return None
    options = plan.options
    source = LocalResources(client, plan.endpoint) if client is not None else _azure_resources(plan, rules)
    return ResourceWatch(rules, source, options.to, options.baseline, options.interval_s, time.monotonic)


def _azure_resources(plan: Any, rules: tuple):
    import os

    from mlcanary.rollout.azure_read_back import endpoint_resource_id
    from mlcanary.rollout.resources import AzureResources, azure_resource_problem

    endpoint = plan.start.spec.endpoint
    options = plan.options
    types = {name: endpoint.deployments[name].instance_type for name in (options.to, options.baseline)}
    problem = azure_resource_problem(rules, types)
    if problem:
        click.echo(f"error: {problem}; nothing was changed", err=True)
        sys.exit(2)
    from azure.identity import DefaultAzureCredential
    from azure.monitor.querymetrics import MetricsClient

    ctx = click.get_current_context(silent=True)
    region = (ctx.params.get("metrics_region") if ctx else None) or plan.start.config.get("azure-native:location")
    subscription = os.environ.get("ARM_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID") or ""
    client = MetricsClient(f"https://{region}.metrics.monitor.azure.com", DefaultAzureCredential())
    return AzureResources(client, endpoint_resource_id(subscription, endpoint.resource_group, endpoint.workspace,
                                                       endpoint.name), [options.to, options.baseline])


def _azure_reader(plan: Any, client: Any):
    """On Azure, what runs is read from ARM (the endpoint's traffic, its deployments' instance counts)."""
    import os

    if client is not None:
        return None  # the local applier reads back itself
    from mlcanary.components.arm import ArmClient
    from mlcanary.components.azure_args import cloud_name
    from mlcanary.rollout.azure_read_back import AzureReadBack, endpoint_resource_id

    endpoint = plan.start.spec.endpoint
    subscription = os.environ.get("ARM_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID") or ""
    return AzureReadBack(ArmClient(cloud=cloud_name(plan.start.config.get("azure-native:environment"))),
                         endpoint_resource_id(subscription, endpoint.resource_group, endpoint.workspace, endpoint.name))
