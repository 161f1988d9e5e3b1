"""`mlcanary rollout`: promote a deployment step by step, judged by live metrics, rolled back by itself."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from mlcanary.cli_support import state_dir_option
from mlcanary.components.rollout_spec import TICK_BOUNDS
from mlcanary.rollout_steer_cli import steering_for, steering_options


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _steps(value: str | None) -> list | None:
    if value is None:
        return None
    return [int(p) if p.strip().isdigit() else p.strip() for p in value.split(",")]


# The recorded plan's keys (Options.as_json) -> the rollout options they came from.
RECORDED_OPTIONS = {"to": "to", "from": "from", "steps": "steps", "intervalS": "interval", "mirror": "mirror",
                    "mirrorForS": "mirrorFor", "bakeS": "bake", "deleteOld": "deleteOld", "rule": "rule",
                    "judge": "judge", "alpha": "alpha", "minRequests": "minRequests", "maxHold": "maxHold",
                    "failureLimit": "failureLimit", "compare": "compare"}


@click.command()
@click.argument("stage_file", type=click.Path(path_type=Path), required=False)
@click.option("--to", "to", help="The deployment to promote (it must exist in STAGE_FILE).")
@click.option("--from", "from_", help="The baseline (default: the deployment with the most live traffic).")
@click.option("--steps", help="Live % for --to, in order, ending at 100 (default 10,25,50,100).")
@click.option("--interval", help="The least time each step is held and judged: 30s, 2m (default 30s; 1s to 24h).")
@click.option("--mirror", type=int, help="Mirror this % of live traffic to --to before any live traffic.")
@click.option("--mirror-for", help="How long the mirror phase lasts (judged on the mirrored requests; 1s to 24h).")
@click.option("--bake", help="Hold at 100 % and keep judging this long before finishing (1s to 7 days).")
@click.option("--delete-old/--keep-old", "delete_old", default=None, help="Finish by removing the baseline (after --bake).")
@click.option("--rule", "rules", multiple=True,
              help="Repeatable: 'error_rate < 0.02', 'latency_p99_ms < 500', 'error_rate_ratio < 1.5', "
                   "'latency_p90_ratio < 1.2' (ratio = target / baseline).")
@click.option("--compare-path", help="Compare what the models answer (mirror phase: pairs; live steps: output "
              "distributions) at this part of the JSON answer: $ (all), predictions, $.result[0].score.")
@click.option("--output-tolerance", help="Numbers agree within this: 0.01 = 1 % relative, abs:0.5 absolute, "
              "0.01,abs:1e-6 both (default rel:1e-9, the same answer).")
@click.option("--max-disagreement", type=float, help="Share of compared answers allowed to disagree in the mirror "
              "phase (default 0.01); 0: none.")
@click.option("--judge", type=click.Choice(["sequential", "threshold"]), help="sequential (default): anytime-valid "
              "test of target vs baseline; threshold: Flagger's per-interval check.")
@click.option("--alpha", type=float, help="The sequential judge's false-rollback bound (default 0.05; 0.001 to 0.2).")
@click.option("--min-requests", type=int, help="A step is not promoted before the target served this many requests "
              "routed by the split in it (default 100; 3 to 1,000,000).")
@click.option("--max-hold", type=int, help="Intervals a step may be held (too few requests, windows without data) "
              "before the rollout halts (default 3; 0 to 100).")
@click.option("--failure-limit", type=int, help="threshold judge: failed checks before rollback (Flagger's threshold, default 1; 1 to 100).")
@click.option("--load", "load_rps", type=click.FloatRange(min=0.1), help="Send this many requests/s from this process (local target).")
@click.option("--request-file", type=click.Path(path_type=Path), help="JSON body of the --load requests.")
@click.option("--record", type=click.Path(path_type=Path), help="Append one JSON line per judgement and decision to "
              "this record (created 0600; it may hold several rollouts, each with its id).")
@click.option("--plot", type=click.Path(path_type=Path), help="Draw traffic, error rate and latency over time into this PNG.")
@click.option("--resume", is_flag=True, help="Continue the last rollout of --record that did not end (interrupted, "
              "or killed): its plan and options come from the record; STAGE_FILE may be left out.")
@click.option("--apply-stage", is_flag=True, help="When the endpoint differs from STAGE_FILE, let the rollout apply "
              "it first (the change is printed); without it the rollout is refused (exit 2), or asks on a terminal.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON document on stdout, the outcome (rollout, decision, exitCode, message, step, "
              "failure, eValues, targetServed, clientRequests, record, plot), or with --plan-only the plan; progress "
              "and the decision log go to stderr.")
@click.option("--plan-only", is_flag=True, help="Print the derived stages, run them all through the gate, change nothing.")
@click.option("--write-stages", type=click.Path(path_type=Path), help="Write the derived stages as stage files into this folder.")
@click.option("--policy-pack-config", type=click.Path(path_type=Path), help="Policy levels and knobs for the gate (as `check`).")
@click.option("--tick", type=click.FloatRange(*TICK_BOUNDS), default=1.0, show_default=True,
              help="Seconds between judged windows (at most the interval).")
@click.option("--stack", help="azure target: the Pulumi stack to update through the Automation API.")
@click.option("--metrics-region", help="azure target: the region of the endpoint's metrics (default: the endpoint's "
              "own region, or its workspace's, read from Azure).")
@state_dir_option
@steering_options
def rollout(stage_file: Path | None, to, from_, steps, interval, mirror, mirror_for, bake, delete_old, rules,
            compare_path, output_tolerance, max_disagreement, judge, alpha, min_requests, max_hold, failure_limit, load_rps, request_file, record, plot, resume, apply_stage,
            output_format, plan_only, write_stages, policy_pack_config, tick, stack, metrics_region, state_dir) -> None:
    """Promote --to step by step from the stage STAGE_FILE, judged by live metrics, rolled back by itself.

    Every derived step passes the same gate as a hand-made stage (spec, policy pack, transition rules)
    before anything is applied. The plan may also live in the stack config under mlcanary:rollout
    (keys as these options, camelCase; --compare-path, --output-tolerance, --max-disagreement as
    compare: {path, tolerance, maxDisagreement}); flags override it. Only requests routed by the traffic split
    (and mirrored copies, in a mirror phase) judge the target; header-pinned requests are shown apart.
    A window whose metrics could not be read (or whose counts restarted) is no data: its step is held.

    Exit codes: 0 promoted (read back at 100 %); 1 rolled back (a rule or the judge failed), or aborted
    (`rollout abort`), or the endpoint is held by another rollout; 2 refused before any change; 3 halted
    (not enough data, or the endpoint did not read back as promoted); 4 the endpoint was changed by
    someone else (or the hold taken over with --force): the rollout stops without overwriting it;
    130/143 interrupted (left at the last good step).

    The rollout holds its endpoint from its first change to its end: `local up`, `rehearse` and
    another rollout of it are refused. Watch and steer it from another terminal with
    `mlcanary rollout status|pause|resume|promote|abort ENDPOINT`.
    """
    from mlcanary.check import policy_defaults
    from mlcanary.policy_config import PolicyConfigError, load_policy_config
    from mlcanary.rollout.plan import PlanError, gate, load_plan, write_stages as write

    flags = {"to": to, "from": from_, "steps": _steps(steps), "interval": interval, "mirror": mirror,
             "mirrorFor": mirror_for, "bake": bake, "deleteOld": delete_old, "rule": list(rules) or None,
             "judge": judge, "alpha": alpha, "minRequests": min_requests, "maxHold": max_hold,
             "failureLimit": failure_limit,
             "compare": {k: v for k, v in (("path", compare_path), ("tolerance", output_tolerance),
                                           ("maxDisagreement", max_disagreement)) if v is not None} or None}
    point = None
    try:
        settings = load_policy_config(policy_pack_config, policy_defaults())
        if resume:
            point, stage_file, plan = _resumed_plan(record, stage_file, flags)
        elif stage_file is None:
            _fail("STAGE_FILE: required (the stage to roll out from), unless --resume --record FILE", 2)
        else:
            plan = load_plan(stage_file, flags)
    except (PolicyConfigError, PlanError) as err:
        _fail(str(err), 2)
    refused = gate(plan, settings)
    if refused:
        _fail("the gate refuses the plan; nothing was changed:\n" + "\n".join(f"  {r}" for r in refused), 2)
    for advisory in plan.advisories:
        click.echo(f"warning: {advisory}", err=True)
    body = _check_run_options(plan, stage_file, load_rps, request_file, record, plot, tick)
    if plan.options.mirror is not None and plan.options.compare_path is None:
        click.echo("hint: the mirror phase judges errors and latency only; add --compare-path (e.g. '$', or "
                   "the part of the answer holding the predictions) to also compare the mirror's answers with "
                   "the live ones before any client gets one", err=True)
    if plan_only or write_stages:
        written = write(plan, write_stages) if write_stages else []
        azure = _azure_plan(plan, stack, metrics_region) if plan.target == "azure" and stack else None
        _print_plan(plan, written, output_format, azure)
        return
    sys.exit(_run(plan, settings, policy_pack_config, record, plot, point, apply_stage, output_format, load_rps,
                  body, tick, stack, metrics_region, state_dir))


def _resumed_plan(record: Path | None, stage_file: Path | None, flags: dict):
    """The record's last unfinished rollout: where it stopped, and its plan re-derived from the recorded
    options. A flag that contradicts them, or a stage file that now derives other stages, is refused."""
    from mlcanary.rollout.plan import PlanError, load_plan, option_name
    from mlcanary.rollout.record import RecordError, read_record, resume_point

    if not record:
        _fail("--resume needs --record (the record of the rollout to continue)", 2)
    try:
        point = resume_point(read_record(record), record)
    except RecordError as err:
        _fail(str(err), 2)
    recorded = point.plan
    recorded_stage = Path(recorded["stageFile"])
    if stage_file is not None and stage_file.resolve() != recorded_stage.resolve():
        _fail(f"STAGE_FILE {stage_file}: the recorded rollout {point.rollout_id} is of {recorded_stage}; "
              "leave STAGE_FILE out to resume it", 2)
    options = {RECORDED_OPTIONS[key]: value for key, value in recorded.items()
               if key in RECORDED_OPTIONS and value is not None and value != []}
    if isinstance(options.get("compare"), dict):
        options["compare"] = {k: v for k, v in options["compare"].items() if v is not None}
    try:
        plan = load_plan(recorded_stage, options)
    except PlanError as err:
        raise PlanError(f"record {record}: its plan cannot be made again from {recorded_stage}:\n{err}") from None
    for key, now in (("endpoint", plan.endpoint), ("target", plan.target)):  # the record's windows are of its endpoint
        if recorded.get(key) != now:
            _fail(f"{recorded_stage} now names {key} {now!r}; rollout {point.rollout_id} in {record} is of "
                  f"{key} {recorded.get(key)!r}: its record is not evidence about {now!r}; start a new rollout "
                  "instead of --resume", 2)
    changed = _differences(recorded, plan.options.as_json())
    if changed:  # the stage's mlcanary:rollout gives what the record left unset (e.g. compare)
        _fail(f"{recorded_stage} changed since rollout {point.rollout_id} was recorded: its mlcanary:rollout now sets "
              + ", ".join(f"{name} (recorded: {value})" for name, value in changed)
              + "; start a new rollout instead of --resume", 2)
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if given:
        merged = {**options, **given}
        if "compare" in given:  # a compare flag replaces its key, not the recorded object
            merged["compare"] = {**options.get("compare", {}), **given["compare"]}
        with_flags = load_plan(recorded_stage, merged).options.as_json()
        contradicted = _differences(recorded, with_flags)
        if contradicted:
            shown = ", ".join(f"{name} (recorded: {value})" for name, value in contradicted)
            _fail(f"{shown} contradicts the plan recorded in {record} for rollout {point.rollout_id}; "
                  "--resume takes the plan from the record: leave the option out", 2)
    stages = [{"label": s.label, "traffic": s.traffic, "mirror": s.mirror_traffic} for s in plan.steps]
    if stages != recorded.get("stages"):
        _fail(f"{recorded_stage} changed since rollout {point.rollout_id} was recorded: it now derives other steps "
              "than the record's; start a new rollout instead of --resume", 2)
    return point, recorded_stage, plan


def _differences(recorded: dict, options: dict) -> list[tuple[str, Any]]:
    """The options (by their flag) whose value in `options` (Options.as_json) is not the recorded one,
    with the recorded value as a user reads it."""
    from mlcanary.rollout.plan import option_name

    shown = lambda value: ",".join(map(str, value)) if isinstance(value, list) else value  # noqa: E731
    changed = []
    for key, value in options.items():
        before = recorded.get(key)
        if key == "compare":
            before, value = before if isinstance(before, dict) else {}, value or {}
            changed += [(option_name(f"compare.{k}"), before.get(k)) for k in ("path", "tolerance", "maxDisagreement")
                        if before.get(k) != value.get(k)]
        elif before != value:
            changed.append((option_name(RECORDED_OPTIONS[key]), shown(before)))
    return changed


def _check_run_options(plan, stage_file, load_rps, request_file, record, plot, tick) -> bytes | None:
    """Every check of the run's own options, made for --plan-only too: (the --load body)."""
    from mlcanary.rollout.record import RecordError, check_writable

    if load_rps and not request_file:
        _fail("--load needs --request-file (the JSON body to send)", 2)
    if plan.target == "azure" and load_rps:
        _fail("--load sends traffic on the local target only; on Azure, judge real traffic", 2)
    if tick > plan.options.interval_s:
        _fail(f"--tick: at most the interval ({plan.options.interval_s:g} s), got {tick:g}", 2)
    body = None
    if request_file:
        from mlcanary.components.user_files import UnusableFile, read_request_body

        try:
            body = read_request_body(request_file)
        except UnusableFile as err:
            _fail(str(err), 2)
    for option, path in (("--record", record), ("--plot", plot)):
        if path is None:
            continue
        if not path.parent.is_dir():
            _fail(f"{option} {path}: the folder {path.parent} does not exist", 2)
        if path.is_dir():
            _fail(f"{option} {path}: is a folder; give a file name", 2)
        if path.exists() and path.resolve() == Path(stage_file).resolve():
            _fail(f"{option} {path}: is the stage file; give another file name", 2)
    if record and plot and plot.resolve() == record.resolve():
        _fail(f"--plot {plot}: is the --record file; give another file name", 2)
    if plot and plot.is_file() and plot.stat().st_size and not _is_png(plot):
        _fail(f"--plot {plot}: exists and is not a PNG; --plot only replaces a picture it drew", 2)
    if record:
        try:
            check_writable(record)
        except RecordError as err:
            _fail(str(err), 2)
    missing = _missing_modules(plan.target, plot)
    if missing:
        _fail(f"{missing} is not installed: pip install -e '.[local,rollout]'", 2)
    if plan.target == "azure" and plan.options.compare_path is not None:
        _collector_collections(plan)  # Azure discards the mirror's answers: they are read from the data collector
    return body


def _is_png(path: Path) -> bool:
    with path.open("rb") as picture:
        return picture.read(8) == b"\x89PNG\r\n\x1a\n"


def _missing_modules(target: str, plot: Path | None) -> str | None:
    import importlib.util

    needed = ["matplotlib"] if plot else []
    needed += ["azure.monitor.querymetrics"] if target == "azure" else ["prometheus_client"]
    return next((name for name in needed if importlib.util.find_spec(name.split(".")[0]) is None
                 or importlib.util.find_spec(name) is None), None)


def _run(plan, settings, policy_pack_config, record, plot, point, apply_stage, output_format, load_rps, body, tick,
         stack, metrics_region, state_dir) -> int:
    from rich.live import Live

    from mlcanary.console import output_console
    from mlcanary.rollout.appliers import ApplyError
    from mlcanary.rollout import judge_replay
    from mlcanary.rollout.judges import make_judge
    from mlcanary.rollout.plan import plan_json
    from mlcanary.rollout.record import Recorder, RecordError, line_number, new_rollout_id, read_record
    from mlcanary.rollout.runner import Runner

    options = plan.options
    judge = make_judge(options.judge, options.alpha, options.rules, options.failure_limit)
    start_index, served, restored = 0, 0, None
    if point is not None:
        start_index, served = point.start_index, point.target_served
        if point.judge_state is not None:
            try:
                make_judge(options.judge, options.alpha, options.rules, options.failure_limit).load_state(point.judge_state)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                _fail(f"record {record} (rollout {point.rollout_id}): its judgeState cannot be loaded "
                      f"({type(err).__name__}: {err}); nothing was changed", 2)
        try:
            restored = judge_replay.restore(judge, point)
        except judge_replay.ReplayError as err:
            number = line_number(record, err.entry)
            _fail(f"record {record}{f':{number}' if number else ''} (rollout {point.rollout_id}): {err}; "
                  "nothing was changed", 2)
        served = restored.target_served
    answer_judge = _answer_judge(plan)
    if answer_judge is not None and point is not None:  # before anything starts: a bad record changes nothing
        try:
            answer_judge.replay(list(point.answer_windows))
        except ValueError as err:
            _fail(f"record {record} (rollout {point.rollout_id}): {err}; nothing was changed", 2)
    applier, source, client = _edges(plan, policy_pack_config, stack, metrics_region, state_dir)
    answers = _answer_check(plan, client, answer_judge)
    console = output_console(stderr=output_format == "json")

    def log(text: str) -> None:
        """One line per decision, kept in the scrollback (above the live table on a terminal)."""
        console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False)

    if point is None and not applier.in_state(plan.start):
        lines = applier.preview(plan.start)
        console.print(f"endpoint {plan.endpoint} differs from {plan.stage_file}; the rollout starts by applying it:",
                      highlight=False)
        console.print("\n".join(lines), markup=False, highlight=False)
        if not apply_stage and not (sys.stdin.isatty() and console.is_terminal
                                    and click.confirm("apply it now?", default=False, err=True)):
            _fail(f"the endpoint differs from {plan.stage_file}: pass --apply-stage to apply it first (shown above), "
                  "or roll out from a stage file of what runs; nothing was changed", 2)
    rollout_id = point.rollout_id if point is not None else new_rollout_id(plan.endpoint)
    begun = record is not None and record.exists()
    try:  # opened before the hold is taken (a record that cannot be opened must not touch another's hold)
        recorder = Recorder(record, rollout_id)
    except (RecordError, OSError) as err:
        _fail(str(err), 2)
    # The endpoint's hold before anything is said or written: a rollout refused because another holds
    # the endpoint leaves the record as it was (and does not announce a resume it will not make).
    try:
        steering = steering_for(plan, applier, client, stack, record, rollout_id)
    except SystemExit:
        recorder.close()
        if not begun and record is not None:
            record.unlink(missing_ok=True)
        raise
    if point is not None:
        try:
            running = _shares({n: s for n, s in applier.live_traffic(plan.endpoint).items() if s})
        except ApplyError as err:
            running = f"unknown ({err})"
        ended = ("was interrupted" if point.how == "interrupted" else
                 "did not finish: no decision was recorded after it (its process was killed)")
        from mlcanary.rollout.runner import bakes_after

        steps = len(plan.steps)
        resuming = (f"resuming its bake at step {start_index}/{steps}" if not point.baked and bakes_after(plan, start_index - 1)
                    else f"resuming at step {start_index + 1}/{steps}" if start_index < steps
                    else f"resuming after its last step {steps}/{steps}")
        log(f"rollout {point.rollout_id} {ended} at {point.at_step}; the endpoint runs live {running}; {resuming}")
        log(_judge_restored(judge, point, restored, plan))
        if answers:
            log(_answers_restored(answers.judge, point, plan, start_index))
    recorder.write("plan", plan=plan_json(plan), resumedAt=start_index if point is not None else None)
    load = None

    def start_load() -> None:
        nonlocal load
        if answers:  # the endpoint exists now (the stage file is applied): tell it what to compare
            from mlcanary.rollout.sources import SourceError

            try:
                answers.source.start()
            except SourceError as err:
                _fail(str(err), 1)
        if load_rps:
            from mlcanary.rollout.load import Load

            endpoint = client.status()["endpoints"][plan.endpoint]
            load = Load(endpoint["scoringUri"], client.keys(plan.endpoint)["primaryKey"], body, load_rps)
            load.start()

    last_line = [""]

    def print_status(view) -> None:
        """Off a terminal: what the rollout is doing, each time it changes (decisions are logged apart)."""
        if view.status.startswith(("judging", "held")) or view.status == last_line[0]:
            return
        last_line[0] = view.status
        log(f"[{view.index}/{view.steps} {view.step or 'start'}] {view.status}")

    live = Live(console=console, refresh_per_second=4, transient=True) if console.is_terminal else None
    if plan.target == "local":
        applier.progress = _throttled(log) if live is None else lambda text: None
    runner = Runner(plan, applier, source, judge, recorder, tick_s=tick,
                    on_update=(lambda view: live.update(_table(view))) if live else print_status,
                    on_decision=log, answers=answers, steering=steering)
    log(f"rollout {rollout_id}: {options.baseline} -> {options.to} on {plan.endpoint}, {len(plan.steps)} step(s)"
        + (f", record {record}" if record else ""))
    try:
        if live:
            live.start()
        outcome = runner.run(start_index, None, served, on_started=start_load,  # the judge is restored above
                             resumed_step=(restored.target, restored.baseline) if restored else None,
                             baked=point.baked if point is not None else True, resuming=point is not None)
    finally:
        if live:
            live.stop()
        if answers:
            answers.source.stop()
        report = load.stop() if load else None
        recorder.close()
    if report is not None:
        recorder.events.append({"time": round(time.time(), 3), "event": "load", "sent": report.sent,
                                "failed": report.failed})
    if plot:
        from mlcanary.rollout.plot import plot_record

        events = [e for e in read_record(record) if e.get("rollout") == rollout_id] if record else recorder.events
        try:
            plot_record(events, plot, f"{plan.endpoint}: {options.to} ({outcome.decision})")
        except (OSError, ValueError) as err:  # the rollout's outcome stands; only the picture is missing
            click.echo(f"warning: could not draw {plot}: {err}", err=True)
            plot = None
    _print_outcome(console, outcome, runner.view, report, record, plot, output_format, options.alpha, rollout_id,
                   answers.judge if answers else None, any(step.kind == "mirror" for step in plan.steps))
    return outcome.exit_code


def _throttled(log, every_s: float = 10.0):
    """Off a terminal, an apply's progress ("green: waiting until healthy, 12 s of 310 s") every `every_s`."""
    last = {"at": -every_s, "what": ""}

    def progress(text: str) -> None:
        what = text.split(":")[0]
        if what != last["what"] or time.monotonic() - last["at"] >= every_s:
            log(text)
            last.update(at=time.monotonic(), what=what)

    return progress


def _answer_judge(plan):
    """The answer judge, when the rollout says what to compare."""
    options = plan.options
    if options.compare_path is None:
        return None
    from mlcanary.components.answer_compare import settings_from
    from mlcanary.rollout.answer_judge import DEFAULT_MAX_DISAGREEMENT, AnswerJudge, AnswerOptions

    return AnswerJudge(AnswerOptions(
        settings_from(options.compare_path, options.output_tolerance),
        DEFAULT_MAX_DISAGREEMENT if options.max_disagreement is None else options.max_disagreement,
        options.alpha, options.rules))


def _answer_check(plan, client, judge):
    """The answer judge with where its windows come from: the local runtime's answer book, or on Azure
    what the data collector wrote to the workspace's storage."""
    if judge is None:
        return None
    from mlcanary.rollout.answer_judge import AnswerCheck

    if plan.target == "azure":
        return AnswerCheck(judge, _collector_source(plan, judge.options))
    from mlcanary.rollout.answer_source import LocalAnswerSource

    options = plan.options
    return AnswerCheck(judge, LocalAnswerSource(client, plan.endpoint, judge.options, options.to, options.baseline))


def _judge_restored(judge, point, restored, plan) -> str:
    """What the resumed error/latency judge holds, and what the resumed step keeps of its requests."""
    step = plan.steps[point.start_index] if point.start_index < len(plan.steps) else None
    # the lines' own step: a rollout stopped in its bake resumes the bake ("bake at 100 %")
    label = str(point.step_lines[-1].get("step")) if point.step_lines else step.label if step else "?"
    windows = f"the record's {restored.replayed} judged window(s) of step {label}"
    if point.state_from:
        text = f"{judge.name} judge: restored from its state at {point.state_from}"
        text += f" and {windows} after it" if restored.replayed else ""
    else:
        text = f"{judge.name} judge: " + (f"restored from {windows}" if restored.replayed else
                                          "the record holds no judged window yet; it starts from zero")
    text += f": {judge.restored()}"
    if restored.target.requests:
        text += (f"; step {label} keeps its {restored.target.requests} judged request(s) to {plan.options.to} "
                 f"(of the {plan.options.min_requests} it needs) and starts its time again")
    return text


def _answers_restored(judge, point, plan, start_index: int) -> str:
    """What the resumed answer judge holds from the record, and what the resumed step still needs."""
    windows = len(point.answer_windows)
    if not windows:
        return "answers: the record holds no judged window yet; the answer judge starts from zero"
    text = f"answers: restored from the record's {windows} judged window(s): {judge.restored()}"
    judged = [(i, s) for i, s in enumerate(plan.steps) if i >= start_index and s.judged][:1]  # the next judged step
    index, step = judged[0] if judged else (None, None)
    if step is not None and judge.step == (index, step.label):
        kept = (f"{judge.step_compared} compared answers" if step.kind == "mirror" else
                f"{judge.step_tested} tested outputs")
        text += (f"; step {step.label} keeps its {kept}, and starts its time again")
    return text


def _collector_collections(plan):
    """(target, baseline) data collector collections holding the answers, or exit 2 naming the field."""
    from mlcanary.components.spec import ENDPOINT_FIELD
    from mlcanary.rollout.collector_source import answer_collection
    from mlcanary.rollout.sources import SourceError

    def spec_of(name):
        for step in (plan.start, *plan.steps):
            if name in step.spec.endpoint.deployments:
                return step.spec.endpoint.deployments[name]
        return None

    try:
        return tuple(answer_collection(plan.endpoint, name, spec_of(name), f"{ENDPOINT_FIELD}.deployments.{name}")
                     for name in (plan.options.to, plan.options.baseline))
    except SourceError as err:
        _fail(str(err), 2)


def _collector_source(plan, answer_options):
    from mlcanary.rollout.collector_source import CollectorAnswerSource, datastore_containers
    from mlcanary.rollout.sources import SourceError

    target, baseline = _collector_collections(plan)
    endpoint = plan.start.spec.endpoint
    subscription = os.environ.get("ARM_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID")
    try:
        containers = datastore_containers((subscription, endpoint.resource_group, endpoint.workspace),
                                          {target.datastore, baseline.datastore})
    except SourceError as err:
        _fail(str(err), 1)
    source = CollectorAnswerSource(containers, target, baseline, answer_options,
                                   on_note=lambda text: click.echo(f"{time.strftime('%H:%M:%S')} {text}", err=True))
    for line in source.describe():
        click.echo(line, err=True)
    return source


def _edges(plan, policy_pack_config, stack, metrics_region, state_dir):
    """The applier and metric source for the stage's target."""
    from mlcanary.rollout.appliers import ApplyError, LocalApplier, PulumiApplier

    if plan.target == "local":
        from mlcanary.cli_support import runtime_client
        from mlcanary.local_runtime.client import NotRunning
        from mlcanary.rollout.sources import LocalSource

        client = runtime_client(state_dir)
        try:
            client.ensure_running()
        except NotRunning as err:
            _fail(str(err), 1)
        return LocalApplier(client), LocalSource(client, plan.endpoint), client
    from mlcanary.rollout.sources import azure_source

    if not stack:
        _fail("an azure-target rollout runs `pulumi up` through the Automation API: give --stack NAME", 2)
    monitor, arm = _monitor_plan(plan, metrics_region)
    for line in monitor.describe():  # the queries, and the delay the judge works with
        click.echo(line, err=True)
    try:
        applier = PulumiApplier.for_stack(stack, plan.project_dir, plan.project_dir / "policies", policy_pack_config,
                                          on_output=lambda line: click.echo(line, err=True))
    except ApplyError as err:
        _fail(str(err), 2)
    return applier, azure_source(monitor, arm), None


def _monitor_plan(plan, metrics_region):
    """Azure Monitor's queries, prepared once at start: the endpoint's region (unless given) and the
    metric definitions, read from Azure with the ARM_* credentials azure-native uses."""
    from mlcanary.components.arm import ArmClient, ArmError
    from mlcanary.rollout.azure_read_back import endpoint_resource_id
    from mlcanary.rollout.sources import SourceError, monitor_plan

    endpoint = plan.start.spec.endpoint
    subscription = os.environ.get("ARM_SUBSCRIPTION_ID") or os.environ.get("AZURE_SUBSCRIPTION_ID")
    if not subscription:
        _fail("Azure Monitor needs the subscription: set ARM_SUBSCRIPTION_ID (as for azure-native)", 2)
    endpoint_id = endpoint_resource_id(subscription, endpoint.resource_group, endpoint.workspace, endpoint.name)
    try:
        arm = ArmClient()
        return monitor_plan(arm, endpoint_id, metrics_region), arm
    except (ArmError, SourceError) as err:
        _fail(str(err), 2)


def _azure_plan(plan, stack, metrics_region) -> dict:
    """What an Azure rollout will do, read-only: the metric queries and the config each step writes."""
    from mlcanary.rollout.appliers import stage_config_json

    monitor, _ = _monitor_plan(plan, metrics_region)
    steps = [(plan.start.label, plan.start), *((s.label, s) for s in plan.steps), ("rollback", plan.rollback)]
    answers = ({c.deployment: {"collection": c.name, "path": str(c)} for c in _collector_collections(plan)}
               if plan.options.compare_path is not None else None)
    return {"stack": stack, "metrics": monitor.as_json(), "metricLines": monitor.describe(),
            **({"answers": answers} if answers else {}),
            "config": [{"step": label, "setAllJson": json.loads(stage_config_json(step.config))}
                       for label, step in steps]}


def _shares(traffic: dict) -> str:
    """{'blue': 90, 'green': 10} as a user reads it: 'blue 90, green 10'."""
    return ", ".join(f"{name} {share}" for name, share in traffic.items()) or "none"


LIVE_WIDTH = 80  # the live table fits an 80-column terminal; decisions are logged above it


def _table(view):
    """This step's counts per deployment: requests routed by the split (judged), and pinned ones apart."""
    from rich.table import Table

    from mlcanary.rollout.counts import Counts

    title = f"step {view.index}/{view.steps} {view.step}: live {_shares(view.traffic)}" + (
        f", mirror {_shares(view.mirror)}" if view.mirror else "") + f" ({view.elapsed_s:.0f} s)"
    judge = "  ".join(f"{k} {v}" for k, v in view.judge.items())
    if view.pinned:
        judge += "\npinned: sent with the deployment header, around the split: shown, not judged"
    table = Table(title=title, caption=f"{view.status}\n{judge}", width=LIVE_WIDTH, title_justify="left",
                  caption_justify="left")
    for column in ("deployment", "requests", "errors", "error %", "p90 ms", "p99 ms", "pinned"):
        table.add_column(column, justify="left" if column == "deployment" else "right", no_wrap=True,
                         overflow="ellipsis")
    for name in sorted(view.counts.keys() | view.pinned.keys()):
        counts, pinned = view.counts.get(name, Counts()), view.pinned.get(name)
        rate = counts.rate("error_rate")
        p90, p99 = counts.percentile_ms(90), counts.percentile_ms(99)
        table.add_row(name, str(counts.requests), str(counts.errors), "-" if rate is None else f"{100 * rate:.2f}",
                      "-" if p90 is None else f"{p90:.1f}", "-" if p99 is None else f"{p99:.1f}",
                      str(pinned.requests) if pinned else "0")
    return table


def _print_plan(plan, written: list[Path], output_format: str, azure: dict | None = None) -> None:
    stages = [{"step": i, "label": s.label, "traffic": s.traffic, "mirror": s.mirror_traffic,
               "deployments": list(s.spec.endpoint.deployments)} for i, s in enumerate(plan.steps, start=1)]
    if output_format == "json":
        click.echo(json.dumps({"endpoint": plan.endpoint, "options": plan.options.as_json(), "stages": stages,
                               "gate": "passed", "advisories": plan.advisories,
                               "written": [str(p) for p in written],
                               **({"azure": {k: v for k, v in azure.items() if k != "metricLines"}} if azure else {})},
                              indent=2))
        return
    o = plan.options
    click.echo(f"rollout of {o.to} on {plan.endpoint} from {plan.stage_file} (baseline {o.baseline}, judge {o.judge}, "
               f"interval {o.interval_s:g} s, min requests {o.min_requests})")
    for stage in stages:
        mirror = f", mirror {_shares(stage['mirror'])}" if stage["mirror"] else ""
        click.echo(f"  {stage['step']}. {stage['label']:>12}: live {_shares(stage['traffic'])}{mirror}")
    click.echo(f"  rollback: live {_shares(plan.rollback.traffic)}")
    click.echo(f"gate: all {len(stages) + 1} stages and {len(stages)} transitions pass (spec, policy pack, transition rules)")
    for path in written:
        click.echo(f"wrote {path}")
    if azure:
        for line in azure["metricLines"]:
            click.echo(line)
        for name, answers in (azure.get("answers") or {}).items():
            click.echo(f"answers of {name}: data collector collection {answers['collection']} at {answers['path']}")
        click.echo(f"stack {azure['stack']}: each step writes the stage into the stack config "
                   "(`pulumi config set-all --json`, objects whole), then runs `pulumi up --refresh` with the policy pack:")
        for entry in azure["config"]:
            written_config = {key: value.get("objectValue", value["value"]) for key, value in entry["setAllJson"].items()}
            click.echo(f"  {entry['step']}: {json.dumps(written_config, sort_keys=True)}")


def _by_deployment(counts: dict) -> str:
    return ", ".join(f"{name or 'no deployment'}: {count}" for name, count in sorted(counts.items()))


def _answers_json(answer_judge) -> dict[str, Any] | None:
    if answer_judge is None:
        return None
    return {"compare": answer_judge.options.as_json(), "compared": answer_judge.compared, "agreed": answer_judge.agreed,
            "eValues": answer_judge.e_values(), "samples": answer_judge.samples[-5:]}


def _print_outcome(console, outcome, view, report, record, plot, output_format, alpha: float, rollout_id: str,
                   answer_judge=None, mirrored: bool = False) -> None:
    client_requests: dict[str, Any] | None = None
    if report is not None:
        client_requests = {"sent": report.sent, "failed": report.failed,
                           "byDeployment": dict(report.by_deployment), "failedByDeployment": dict(report.failed_by_deployment)}
    if output_format == "json":
        click.echo(json.dumps({
            "rollout": rollout_id, "decision": outcome.decision, "exitCode": outcome.exit_code, "message": outcome.message,
            "step": outcome.step, "failure": outcome.failure.as_json() if outcome.failure else None,
            "eValues": outcome.e_values, "targetServed": outcome.target_served, "clientRequests": client_requests,
            "answers": _answers_json(answer_judge),
            "record": str(record) if record else None, "plot": str(plot) if plot else None}, indent=2))
        return
    colour = {0: "green", 1: "red", 3: "yellow"}.get(outcome.exit_code, "magenta")
    console.print(f"[bold {colour}]{outcome.decision}[/]: {outcome.message}", highlight=False)
    if view.counts:
        console.print(_table(view))
    if outcome.failure and outcome.failure.e_value is not None:
        console.print(f"e-value {outcome.failure.e_value:.4g} (rollback at 1/alpha = {1 / alpha:g})", highlight=False)
    if answer_judge is not None and answer_judge.compared:
        console.print(f"answers compared in the mirror phase: {answer_judge.agreed} of {answer_judge.compared} agreed "
                      f"(at {answer_judge.options.settings.path}, within {answer_judge.options.settings.tolerance})",
                      highlight=False)
        shown = {}
        for sample in reversed(answer_judge.samples):  # the latest few, each disagreement once
            shown.setdefault((sample["request"], sample["reason"]), sample)
        for sample in list(shown.values())[:3]:
            console.print(f"  disagreement (request {sample['request']}): {sample['reason']}", highlight=False)
    console.print(f"the target served {outcome.target_served} request(s) during the rollout"
                  + (" (its mirrored copies included: no client got those answers)" if mirrored else ""), highlight=False)
    if client_requests:
        console.print(f"client requests (--load): {report.sent} sent, {report.failed} failed"
                      + (f" ({_by_deployment(report.failed_by_deployment)})" if report.failed else ""), highlight=False)
    if record:
        console.print(f"record: {record} (rollout {rollout_id})", highlight=False)
    if plot:
        console.print(f"plot: {plot}")
