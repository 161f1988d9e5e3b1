"""A rollout plan: the stage file plus the options -> the stages each step applies, all gated first.

Every derived stage is an ordinary stack config (the stage file with the traffic changed), validated
by the spec, and judged with the stage before it by the policy pack and the transition rules through
`mlcanary.check.check_configs`, the code `mlcanary check` runs. Nothing is applied before the whole
plan has passed.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlcanary.components.rollout_rules import Rule, parse_rule
from mlcanary.components.rollout_spec import COMPARE_OPTIONS, RolloutSpec, duration_seconds, rollout_problems
from mlcanary.components.rules import Problem
from mlcanary.components.spec import NAMESPACE, SpecError, StackSpec, is_asset_reference, load_stack_config
from mlcanary.components.stage_file import namespaced, project_dir_of, read_stage_file

ENDPOINT_KEY = f"{NAMESPACE}:endpoint"


class PlanError(ValueError):
    """The plan cannot be made or is refused by the gate; `problems` say where and why."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = problems or []
        super().__init__("\n".join([message, *(f"  {p}" for p in self.problems)]))


@dataclass(frozen=True)
class Options:
    to: str
    baseline: str
    steps: tuple[int, ...]
    interval_s: float
    mirror: int | None
    mirror_for_s: float | None
    bake_s: float | None
    delete_old: bool
    rules: tuple[Rule, ...]
    judge: str
    alpha: float
    min_requests: int
    max_hold: int
    failure_limit: int
    compare_path: str | None = None  # comparing answers is on when set (rollout/answer_judge.py)
    output_tolerance: str | None = None
    max_disagreement: float | None = None

    def as_json(self) -> dict:
        return {"to": self.to, "from": self.baseline, "steps": list(self.steps), "intervalS": self.interval_s,
                "mirror": self.mirror, "mirrorForS": self.mirror_for_s, "bakeS": self.bake_s,
                "deleteOld": self.delete_old, "rule": [str(r) for r in self.rules], "judge": self.judge,
                "alpha": self.alpha, "minRequests": self.min_requests, "maxHold": self.max_hold,
                "failureLimit": self.failure_limit,
                "compare": None if self.compare_path is None else {
                    "path": self.compare_path, "tolerance": self.output_tolerance,
                    "maxDisagreement": self.max_disagreement}}


@dataclass(frozen=True)
class Step:
    label: str  # what the step does: "mirror 10 %", "25 %", "delete blue"
    kind: str  # "mirror", "mirror-off", "live" or "delete"
    percent: int  # the target's live share (mirror share for a mirror step)
    config: dict[str, Any]  # the stage's whole `config:` mapping
    spec: StackSpec

    @property
    def traffic(self) -> dict[str, int]:
        return dict(self.spec.endpoint.live_traffic)

    @property
    def mirror_traffic(self) -> dict[str, int]:
        return dict(self.spec.endpoint.mirror_traffic)

    @property
    def judged(self) -> bool:
        """Ending the mirror and deleting the baseline send the target nothing new to judge."""
        return self.kind not in ("mirror-off", "delete")


@dataclass(frozen=True)
class Plan:
    stage_file: Path
    project_dir: Path
    options: Options
    start: Step  # the stage file itself
    steps: list[Step]  # in order; a trailing "delete" step with --delete-old
    rollback: Step  # the baseline live, the target dark, no mirror
    advisories: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.start.spec.endpoint.name

    @property
    def target(self) -> str:
        return self.start.spec.target


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as its record keeps it: what --resume re-derives and checks the stage file against."""
    return {"endpoint": plan.endpoint, "stageFile": str(plan.stage_file.resolve()), "target": plan.target,
            **plan.options.as_json(),
            "stages": [{"label": s.label, "traffic": s.traffic, "mirror": s.mirror_traffic} for s in plan.steps],
            "rollback": plan.rollback.traffic}


def option_name(key: str) -> str:
    """`minRequests` -> `--min-requests`; `compare.tolerance` -> `--output-tolerance`."""
    if key.startswith("compare."):
        return COMPARE_OPTIONS[key.removeprefix("compare.")]
    return "--" + "".join(f"-{c.lower()}" if c.isupper() else c for c in key)


def load_plan(stage_file: Path, flags: dict[str, Any]) -> Plan:
    """Read STAGE_FILE, merge `mlcanary:rollout` with the flags (flags win), derive the stages."""
    from mlcanary.components.stage_file import StageFileError

    try:
        config = read_stage_file(stage_file)
    except StageFileError as err:
        raise PlanError(str(err)) from None
    project_dir = project_dir_of(stage_file)
    try:
        stage = load_stack_config(namespaced(config, NAMESPACE), project_dir)
    except SpecError as err:
        raise PlanError(f"{stage_file}: invalid stack config:", [str(p) for p in err.problems]) from None
    options = resolve_options(stage, {k: v for k, v in flags.items() if v is not None and v != ()})
    return derive(stage_file, project_dir, config, stage, options)


def resolve_options(stage: StackSpec, flags: dict[str, Any]) -> Options:
    """The stage's `mlcanary:rollout` with the flags over it. `flags` as the config spells them; the
    compare flags as `{"compare": {"path": ..., "tolerance": ..., "maxDisagreement": ...}}`, merged
    key by key into the config's `compare`."""
    from_config = stage.rollout.model_dump(by_alias=True, exclude_none=True) if stage.rollout else {}
    merged = {**from_config, **flags}
    flag_compare = flags.get("compare") or {}
    if "compare" in flags:
        merged["compare"] = {**from_config.get("compare", {}), **flag_compare}

    def field(key: str) -> str:
        given = key.removeprefix("compare.") in flag_compare if key.startswith("compare.") else key in flags
        return option_name(key) if given else f"{NAMESPACE}:rollout.{key}"

    try:
        plan = RolloutSpec.model_validate(merged)
    except ValidationError as err:
        raise PlanError("invalid rollout options:", [
            f"{field(_key_of(e['loc']))}: {e['msg']}, got {e.get('input')!r}" for e in err.errors()]) from None
    problems = rollout_problems(plan, stage.endpoint.deployments, field)
    if plan.to is None:
        problems.append(Problem("--to", "required: the deployment to promote"))
    baseline = plan.from_ or _busiest(stage, plan.to)
    if baseline is None and plan.to is not None:
        problems.append(Problem("--from", "no other deployment has live traffic in this stage: name the baseline"))
    if problems:
        raise PlanError("invalid rollout options:", [str(p) for p in problems])
    seconds = lambda key: None if plan.get(key) is None else duration_seconds(plan.get(key))  # noqa: E731
    return Options(
        to=plan.to, baseline=baseline, steps=tuple(plan.get("steps")), interval_s=seconds("interval"),
        mirror=plan.mirror, mirror_for_s=seconds("mirrorFor"), bake_s=seconds("bake"),
        delete_old=plan.get("deleteOld"), rules=tuple(parse_rule(r) for r in plan.get("rule") or ()),
        judge=plan.get("judge"), alpha=plan.get("alpha"), min_requests=plan.get("minRequests"),
        max_hold=plan.get("maxHold"), failure_limit=plan.get("failureLimit"),
        compare_path=plan.compare.path if plan.compare else None,
        output_tolerance=None if plan.compare is None or plan.compare.tolerance is None else str(plan.compare.tolerance),
        max_disagreement=plan.compare.max_disagreement if plan.compare else None,
    )


def _key_of(loc: tuple) -> str:
    """A pydantic error's place as a key: `steps` (not `steps.1`), `compare.tolerance`."""
    parts = [str(p) for p in loc if p not in ("str", "float", "int")]
    return ".".join(parts[:2]) if parts[:1] == ["compare"] else parts[0]


def _busiest(stage: StackSpec, target: str | None) -> str | None:
    shares = {n: s for n, s in stage.endpoint.live_traffic.items() if n != target and s > 0}
    return max(shares, key=lambda n: shares[n]) if shares else None


def derive(stage_file: Path, project_dir: Path, config: dict, stage: StackSpec, options: Options) -> Plan:
    live = stage.endpoint.live_traffic
    others = {n: s for n, s in live.items() if n not in (options.to, options.baseline)}
    room = 100 - sum(others.values())

    def traffic(percent: int) -> dict[str, int]:
        return {**others, options.baseline: room - percent, options.to: percent}

    if room < options.steps[-1]:
        raise PlanError(f"other deployments keep {100 - room} % of live traffic ({others}); "
                        f"{options.to!r} can take at most {room} %, but the last step is {options.steps[-1]} %")
    name = stage_file.name
    made: list[tuple[str, str, int, dict]] = []
    if options.mirror is not None:
        made.append((f"mirror {options.mirror} %", "mirror", options.mirror,
                     _with_traffic(config, traffic(0), {options.to: options.mirror})))
        # Azure's safe-rollout order: the mirror ends in a step of its own before any live traffic.
        made.append(("mirror off", "mirror-off", 0, _with_traffic(config, traffic(0), {})))
    for percent in options.steps:
        made.append((f"{percent} %", "live", percent, _with_traffic(config, traffic(percent), {})))
    if options.compare_path is not None and not any(
            kind == "mirror" or (kind == "live" and 0 < percent < room) for _, kind, percent, _ in made):
        # The answer judge compares mirrored pairs, or both sides' outputs in a split step: with neither,
        # a target answering a constant would be promoted on no compared answer at all.
        raise PlanError("invalid rollout options:", [
            f"--compare-path ({NAMESPACE}:rollout.compare.path): no step of this plan gives answers to compare: "
            f"add a mirror phase (--mirror, --mirror-for), or a step in which {options.baseline!r} keeps live "
            f"traffic (the steps {', '.join(map(str, options.steps))} go straight to {options.steps[-1]} %)"])
    if options.delete_old:
        made.append((f"delete {options.baseline}", "delete", options.steps[-1],
                     _without(config, options.baseline, traffic(options.steps[-1]))))
    problems, steps = [], []
    for label, kind, percent, step_config in made:
        try:
            spec = load_stack_config(namespaced(step_config, NAMESPACE), project_dir)
        except SpecError as err:
            problems += [f"{name} step {label!r}: {p}" for p in err.problems]
            continue
        steps.append(Step(label, kind, percent, step_config, spec))
    rollback_config = _with_traffic(config, traffic(0), {})
    try:
        rollback_spec = load_stack_config(namespaced(rollback_config, NAMESPACE), project_dir)
    except SpecError as err:
        problems += [f"{name} rollback: {p}" for p in err.problems]
    if problems:
        raise PlanError("a derived stage is invalid:", problems)
    return Plan(stage_file, project_dir, options, Step(name, "start", live.get(options.to, 0), config, stage),
                steps, Step("rollback", "live", 0, rollback_config, rollback_spec))


def _with_traffic(config: dict, traffic: dict[str, int], mirror: dict[str, int]) -> dict:
    derived = copy.deepcopy(config)
    endpoint = derived[ENDPOINT_KEY]
    endpoint["traffic"] = dict(traffic)
    endpoint["mirrorTraffic"] = dict(mirror)
    return derived


def _without(config: dict, deployment: str, traffic: dict[str, int]) -> dict:
    """The stage without `deployment`, nor anything naming it (its traffic; the rollout's `from`, which
    the stage file may name and which would otherwise make the delete step's stage invalid)."""
    derived = _with_traffic(config, {n: s for n, s in traffic.items() if n != deployment}, {})
    del derived[ENDPOINT_KEY]["deployments"][deployment]
    rollout = derived.get(f"{NAMESPACE}:rollout")
    if isinstance(rollout, dict) and rollout.get("from") == deployment:
        del rollout["from"]
    return derived


def gate(plan: Plan, settings: dict) -> list[str]:
    """Run the stage file and every derived stage, in order, through `mlcanary check`'s gate; the
    mandatory violations and input errors (empty: the plan may run). Advisories go to the plan."""
    from mlcanary.check import check_configs

    stages = [(plan.start.label, plan.start.config, plan.project_dir),
              *((f"step {step.label!r}", step.config, plan.project_dir) for step in plan.steps)]
    report = check_configs(stages, settings)
    plan.advisories.extend(f"{v.stage}: [advisory] {v.policy}: {v.message}" for v in report.violations
                           if v.enforcementLevel == "advisory")
    return [*report.errors, *(f"{v.stage}: [mandatory] {v.policy}: {v.message}" for v in report.violations
                              if v.enforcementLevel == "mandatory")]


def write_stages(plan: Plan, folder: Path) -> list[Path]:
    """Each derived stage as a stage file (`NN-<label>.yaml`), its paths relative to where they resolve
    from (`project_dir_of`: the Pulumi project above the folder, else the folder), so they can be committed."""
    folder.mkdir(parents=True, exist_ok=True)
    base = project_dir_of(folder / "x.yaml")
    written = []
    for index, step in enumerate(plan.steps, start=1):
        slug = step.label.replace(" %", "pct").replace(" ", "-")
        path = folder / f"{plan.stage_file.stem}-step-{index}-{slug}.yaml"
        config = _rebased_paths(step.config, plan.project_dir, base)
        header = (f"# Derived by `mlcanary rollout {plan.stage_file.name} --to {plan.options.to}`: step {index} of "
                  f"{len(plan.steps)}, {step.label} (traffic {step.traffic}, mirror {step.mirror_traffic or 'off'})\n")
        path.write_text(header + yaml.safe_dump({"config": config}, sort_keys=False), encoding="utf-8")
        written.append(path)
    return written


def _rebased_paths(config: dict, project_dir: Path, base: Path) -> dict:
    """Relative paths of `config` (resolved from `project_dir`) made relative to `base` instead."""
    if project_dir.resolve() == base.resolve():
        return config
    config = copy.deepcopy(config)

    def rebased(value: str) -> str:
        return os.path.relpath((project_dir / value).resolve(), base)

    for deployment in config[ENDPOINT_KEY].get("deployments", {}).values():
        for key in ("model", "code", "file"):
            value = deployment.get(key)
            if isinstance(value, str) and not is_asset_reference(value) and not Path(value).is_absolute():
                deployment[key] = rebased(value)
        environment = deployment.get("environment")
        if isinstance(environment, dict) and isinstance(environment.get("condaFile"), str) \
                and not Path(environment["condaFile"]).is_absolute():
            environment["condaFile"] = rebased(environment["condaFile"])
    return config
