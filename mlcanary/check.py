"""`mlcanary check`: judge stage files offline, as `pulumi preview --policy-pack policies` would.

For each stage file: validate its config, run the real program under Pulumi's mocks, and hand every
registered resource to the policy pack's own analyzer servicer through the same gRPC messages the
engine sends (Configure, Analyze per resource, AnalyzeStack), so the policies see inputs exactly as
the engine gives them. Then judge each step between consecutive stages. Nothing is applied.
"""

from __future__ import annotations

import functools
import gc
from dataclasses import asdict, dataclass, field
from pathlib import Path

from google.protobuf import json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2 as proto
from pulumi_policy import EnforcementLevel
from pulumi_policy.policy import _PolicyAnalyzerServicer

from mlcanary.components import program
from mlcanary.components.render import Registration, Render, render_program
from mlcanary.components.spec import NAMESPACE, EndpointSpec, SpecError, load_stack_config
from mlcanary.components.stage_file import StageFileError, namespaced, project_dir_of, read_stage_file
from mlcanary.local_runtime.pulumi_access import RuntimeAccess
from mlcanary.policy_config import PolicySettings
from mlcanary.policies.azure_ml import POLICIES
from mlcanary.policies.transitions import TRANSITION_POLICIES

PACK_NAME = "mlcanary"
PACK_VERSION = "0.1.0"
_PROTO_LEVELS = {
    EnforcementLevel.ADVISORY: proto.ADVISORY,
    EnforcementLevel.MANDATORY: proto.MANDATORY,
    EnforcementLevel.DISABLED: proto.DISABLED,
    EnforcementLevel.REMEDIATE: proto.REMEDIATE,
}
_LEVEL_NAMES = {value: level.value for level, value in _PROTO_LEVELS.items()}


def policy_defaults() -> dict:
    """Every policy `check` runs, pack and transitions: name -> (default level, config schema)."""
    return {p.name: (p.enforcement_level, p.config_schema) for p in [*POLICIES, *TRANSITION_POLICIES]}


@dataclass(frozen=True)
class Violation:
    stage: str  # a stage file, or "A -> B" for a transition
    policy: str
    enforcementLevel: str  # noqa: N815 - the JSON output's key, as Pulumi spells it
    resource: str  # URN, or `endpoint NAME` for what belongs to no single resource
    description: str
    message: str

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InputError:
    """An input that could not be used (a stage file, the policy config); the message names the field."""

    input: str
    message: str

    def __str__(self) -> str:
        return self.message

    def as_json(self) -> dict:
        return {"input": self.input, "error": self.message}


@dataclass
class CheckReport:
    violations: list[Violation] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    stages: int = 0
    resources: int = 0
    transitions: int = 0

    def count(self, level: str) -> int:
        return sum(v.enforcementLevel == level for v in self.violations)

    @property
    def exit_code(self) -> int:
        if self.errors:
            return 2
        return 1 if self.count("mandatory") else 0


def check_stages(paths: list[Path], settings: dict[str, PolicySettings]) -> CheckReport:
    """Every stage file judged, in order. One process renders them one after another: a render takes
    ~25 ms, less than what forked workers cost in CPU (docs/benchmarks.md)."""
    return _report([str(path) for path in paths], [load_and_render(path) for path in paths], settings)


def check_configs(stages: list[tuple[str, dict, Path]], settings: dict[str, PolicySettings]) -> CheckReport:
    """The same gate for stages held in memory: (label, full `config:` mapping, project dir) each,
    in rollout order (e.g. the steps `mlcanary rollout` derives)."""
    return _report([label for label, _, _ in stages], [_load_and_render_config(stage) for stage in stages], settings)


def _report(labels: list[str], loaded: list[Loaded], settings: dict[str, PolicySettings]) -> CheckReport:
    report = CheckReport()
    analyzer = _configured_analyzer(settings)
    previous: tuple[str, EndpointSpec] | None = None
    for label, (spec, render, error) in zip(labels, loaded):
        if error is not None:
            report.errors.append(InputError(label, error))
            previous = None
            continue
        report.stages += 1
        report.resources += len(render.resources)
        report.transitions += previous is not None
        report.violations += judge_stage(label, spec, render, settings, before=previous, analyzer=analyzer)
        previous = (label, spec)
    return report


def judge_stage(
    stage: str, spec: EndpointSpec, render: Render, settings: dict[str, PolicySettings], *,
    before: tuple[str, EndpointSpec] | None = None, analyzer: _PolicyAnalyzerServicer | None = None,
) -> list[Violation]:
    """The gate every stage passes, in `check` and before `local up` changes anything: every policy of
    the pack on the rendered stage, then the transition rules on the step from `before` (a label and
    the endpoint as it was: the previous stage file, or the running endpoint), if there is one."""
    violations = _analyze(stage, render, analyzer or _configured_analyzer(settings))
    if before is not None:
        violations += _check_transition(f"{before[0]} -> {stage}", before[1], spec, settings)
    return violations


Loaded = tuple[EndpointSpec | None, Render | None, str | None]


def load_and_render(path: Path) -> Loaded:
    """A stage file's validated endpoint and its render under mocks, or the input error as text."""
    try:
        config = read_stage_file(path)
    except StageFileError as err:
        return None, None, str(err)
    return _load_and_render_config((str(path), config, project_dir_of(path)))


@functools.cache
def _freeze_imported() -> None:
    """Once per process, before the first render: the SDKs imported by then are ~100,000 objects that are
    never garbage; out of the collector's sight, each full collection during renders costs ~40 ms less.
    (Once: what later renders leave is collected as usual.)"""
    gc.freeze()


def _load_and_render_config(stage: tuple[str, dict, Path]) -> Loaded:
    label, config, project_dir = stage
    _freeze_imported()
    try:
        spec = load_stack_config(namespaced(config, NAMESPACE), project_dir)
    except SpecError as err:
        return None, None, f"{label}: invalid stack config:\n" + "\n".join(f"  {p}" for p in err.problems)
    return spec.endpoint, render_program(lambda: program.main(project_dir, RuntimeAccess()), config), None


def _configured_analyzer(settings: dict[str, PolicySettings]) -> _PolicyAnalyzerServicer:
    """The pack's analyzer, configured as the engine does it for `--policy-pack-config`."""
    analyzer = _PolicyAnalyzerServicer(PACK_NAME, PACK_VERSION, POLICIES, EnforcementLevel.MANDATORY)
    request = proto.ConfigureAnalyzerRequest()
    for policy in POLICIES:
        chosen = settings[policy.name]
        request.policyConfig[policy.name].enforcementLevel = _PROTO_LEVELS[chosen.level]
        request.policyConfig[policy.name].properties.CopyFrom(_struct(chosen.properties))
    analyzer.Configure(request, None)
    return analyzer


def _struct(value: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    json_format.ParseDict(value, struct)
    return struct


def _options(resource: Registration) -> proto.AnalyzerResourceOptions:
    return proto.AnalyzerResourceOptions(
        parent=resource.parent,
        ignoreChanges=resource.ignore_changes,
        deleteBeforeReplace=resource.delete_before_replace,
        deleteBeforeReplaceDefined=True,
    )


def _analyze(stage: str, render: Render, analyzer: _PolicyAnalyzerServicer) -> list[Violation]:
    diagnostics = []
    # Sibling resources (blue, green) register in either order: by URN, a stage's violations come out
    # in the same order on every run.
    resources = sorted(render.resources, key=lambda resource: resource.urn)
    properties = [_struct(resource.inputs) for resource in resources]
    for resource, props in zip(resources, properties):
        request = proto.AnalyzeRequest(
            type=resource.type, properties=props, urn=resource.urn, name=resource.name, options=_options(resource),
        )
        diagnostics += [(d, resource.urn) for d in analyzer.Analyze(request, None).diagnostics]
    stack = proto.AnalyzeStackRequest(
        resources=[
            proto.AnalyzerResource(
                type=r.type, properties=props, urn=r.urn, name=r.name, options=_options(r),
                parent=r.parent, dependencies=r.dependencies,
            )
            for r, props in zip(resources, properties)
        ]
    )
    diagnostics += [(d, "") for d in analyzer.AnalyzeStack(stack, None).diagnostics]
    return [
        Violation(
            stage=stage,
            policy=d.policyName,
            enforcementLevel=_LEVEL_NAMES[d.enforcementLevel],
            resource=d.urn or urn or "(stack)",
            description=d.description,
            message=d.message.removeprefix(d.description).lstrip("\n"),
        )
        for d, urn in diagnostics
    ]


def _check_transition(
    step: str, before: EndpointSpec, after: EndpointSpec, settings: dict[str, PolicySettings]
) -> list[Violation]:
    violations = []
    for policy in TRANSITION_POLICIES:
        chosen = settings[policy.name]
        if chosen.level == EnforcementLevel.DISABLED:
            continue
        level = EnforcementLevel.MANDATORY if chosen.level == EnforcementLevel.REMEDIATE else chosen.level
        for message in policy.check(before, after, chosen.properties):
            violations.append(
                Violation(step, policy.name, level.value, f"endpoint {after.name}", policy.description, message)
            )
    return violations
