"""CrossGuard policies for Azure ML online endpoints.

Importable without starting a policy server (only policies/__main__.py builds the PolicyPack).
Every check calls `mlcanary.components.rules`; this module only finds the values in the resource inputs
(as the engine hands them over: camelCase keys, numbers as floats) and applies the policy's knobs.
Each knob's default lives in its schema; the code reads defaults from there, because the SDK does
not apply schema defaults itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from mlcanary.components import rules
from mlcanary.components.durations import parse_iso_seconds

ENDPOINT = "azure-native:machinelearningservices:OnlineEndpoint"
DEPLOYMENT = "azure-native:machinelearningservices:OnlineDeployment"
TRAFFIC = "pulumi-python:dynamic/azureml:EndpointTraffic"
# The local target's resources (components/local_target.py): same rules, same traffic input names.
LOCAL_ENDPOINT = "pulumi-python:dynamic/local:LocalOnlineEndpoint"
LOCAL_DEPLOYMENT = "pulumi-python:dynamic/local:LocalOnlineDeployment"
LOCAL_TRAFFIC = "pulumi-python:dynamic/local:LocalEndpointTraffic"
ENDPOINTS, DEPLOYMENTS, TRAFFICS = (ENDPOINT, LOCAL_ENDPOINT), (DEPLOYMENT, LOCAL_DEPLOYMENT), (TRAFFIC, LOCAL_TRAFFIC)


def knobs(args: Any, schema: PolicyConfigSchema | None) -> dict[str, Any]:
    """The policy's config with its schema defaults filled in."""
    defaults = {k: v["default"] for k, v in (schema.properties if schema else {}).items() if "default" in v}
    given = {k: rules.whole_number(v) if rules.whole_number(v) is not None else v
             for k, v in (args.get_config() or {}).items()}  # numbers arrive as floats
    return {**defaults, **given}


def report(report_violation: ReportViolation, label: str, problems: Iterable[rules.Problem], urn: str | None = None):
    for problem in problems:
        report_violation(f"{label}: {problem}", urn)


def label(resource: Any) -> str:
    """`name (Type)` of a resource, as messages name it."""
    return f"{resource.name} ({resource.resource_type.rsplit(':', 1)[-1]})"


def traffic_of(resource: Any) -> tuple[Mapping, Mapping] | None:
    """(live, mirror) traffic a resource sets, or None if it sets none."""
    if resource.resource_type in TRAFFICS:
        return resource.props.get("traffic") or {}, resource.props.get("mirror_traffic") or {}
    if resource.resource_type == ENDPOINT:
        properties = resource.props.get("properties") or {}
        if "traffic" in properties or "mirrorTraffic" in properties:
            return properties.get("traffic") or {}, properties.get("mirrorTraffic") or {}
    return None


def endpoint_name_of(resource: Any) -> str | None:
    if resource.resource_type in TRAFFICS:
        return resource.props.get("endpoint_name")
    if resource.resource_type in ENDPOINTS + DEPLOYMENTS:
        return resource.props.get("endpointName")
    return None


def resource_policy(
    name: str,
    description: str,
    types: tuple[str, ...],
    check: Callable[[Any, dict[str, Any]], list[rules.Problem]],
    schema: PolicyConfigSchema | None = None,
) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type in types:
            report(report_violation, label(args), check(args, knobs(args, schema)))

    return ResourceValidationPolicy(
        name=name,
        description=description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=schema,
    )


# --- resource policies ------------------------------------------------------------------------

MAX_MIRROR_SCHEMA = PolicyConfigSchema(
    {"maxMirrorPercent": {"type": "integer", "minimum": 0, "maximum": rules.MAX_MIRROR_PERCENT,
                          "default": rules.MAX_MIRROR_PERCENT,
                          "description": "Largest mirror share allowed (Azure's limit is 50)."}}
)


def _traffic_shares(args: Any, config: dict[str, Any]) -> list[rules.Problem]:
    found = traffic_of(args)
    if found is None:
        return []
    live, mirror = found
    problems = rules.traffic_share_problems(live, mirror, max_mirror_percent=config["maxMirrorPercent"])
    if args.resource_type in TRAFFICS:  # it declares its deployments; the stack policy checks they exist
        problems += rules.traffic_target_problems(live, mirror, args.props.get("deployments") or [])
    return problems


traffic_valid = resource_policy(
    "endpoint-traffic-valid",
    "Live traffic is whole percents 0-100 summing to 100 (0 with nothing live); mirror traffic goes to at "
    "most one deployment, at most maxMirrorPercent (never above 50), never to one with live traffic.",
    (*TRAFFICS, ENDPOINT),
    _traffic_shares,
    MAX_MIRROR_SCHEMA,
)


def _names(args: Any, _config: dict[str, Any]) -> list[rules.Problem]:
    if args.resource_type in ENDPOINTS:
        return rules.name_problems("endpointName", args.props.get("endpointName"), "endpoint name")
    return rules.name_problems("deploymentName", args.props.get("deploymentName"), "deployment name")


names_valid = resource_policy(
    "names-valid",
    "Endpoint and deployment names are 3-32 characters, start with a letter, use letters, digits and "
    "hyphens, and do not end in a hyphen.",
    ENDPOINTS + DEPLOYMENTS,
    _names,
)

INSTANCE_COUNT_SCHEMA = PolicyConfigSchema(
    {"minInstanceCount": {"type": "integer", "minimum": rules.MIN_INSTANCE_COUNT,
                          "maximum": rules.MAX_INSTANCE_COUNT, "default": rules.MIN_INSTANCE_COUNT,
                          "description": "Fewest instances a deployment may have (e.g. 2 or 3 in production)."}}
)


def _instance_count(args: Any, config: dict[str, Any]) -> list[rules.Problem]:
    if args.resource_type == LOCAL_DEPLOYMENT:
        return rules.instance_count_problems("instanceCount", args.props.get("instanceCount"), config["minInstanceCount"])
    sku = args.props.get("sku") or {}
    capacity = sku.get("capacity", 1)  # Azure's default when no sku is given
    return rules.instance_count_problems("sku.capacity", capacity, config["minInstanceCount"])


instance_count_in_range = resource_policy(
    "instance-count-in-range",
    "A deployment runs between minInstanceCount (default 1) and 50 instances.",
    DEPLOYMENTS,
    _instance_count,
    INSTANCE_COUNT_SCHEMA,
)

REQUEST_TIMEOUT_SCHEMA = PolicyConfigSchema(
    {"maxRequestTimeoutMs": {"type": "integer", "minimum": 1, "maximum": rules.MAX_REQUEST_TIMEOUT_MS,
                             "default": rules.MAX_REQUEST_TIMEOUT_MS,
                             "description": "Longest request timeout allowed (Azure's managed limit is 180000)."}}
)


def _request_timeout(args: Any, config: dict[str, Any]) -> list[rules.Problem]:
    if args.resource_type == LOCAL_DEPLOYMENT:
        timeout_ms = (args.props.get("spec") or {}).get("requestTimeoutMs")
        if timeout_ms is None:
            return []
        return rules.request_timeout_problems("spec.requestTimeoutMs", timeout_ms, config["maxRequestTimeoutMs"])
    properties = args.props.get("properties") or {}
    if properties.get("endpointComputeType") != "Managed":
        return []
    timeout = (properties.get("requestSettings") or {}).get("requestTimeout")
    if timeout is None:
        return []
    field = "properties.requestSettings.requestTimeout"
    seconds = parse_iso_seconds(timeout)
    if seconds is None:
        return [rules.Problem(field, f"must be an ISO-8601 duration such as PT90S, got {rules.shown(timeout)}")]
    return rules.request_timeout_problems(field, round(seconds * 1000), config["maxRequestTimeoutMs"])


request_timeout_limit = resource_policy(
    "request-timeout-limit",
    "A managed deployment's request timeout is at most maxRequestTimeoutMs (never above 180 s).",
    DEPLOYMENTS,
    _request_timeout,
    REQUEST_TIMEOUT_SCHEMA,
)

AUTH_MODE_SCHEMA = PolicyConfigSchema(
    {"allowedAuthModes": {"type": "array", "items": {"type": "string", "enum": list(rules.AUTH_MODES)},
                          "minItems": 1, "uniqueItems": True, "default": list(rules.AUTH_MODES),
                          "description": "Auth modes endpoints may use."}}
)


def _auth_mode(args: Any, config: dict[str, Any]) -> list[rules.Problem]:
    if args.resource_type == LOCAL_ENDPOINT:
        return rules.auth_mode_problems("authMode", args.props.get("authMode"), allowed=config["allowedAuthModes"])
    mode = (args.props.get("properties") or {}).get("authMode")
    return rules.auth_mode_problems(
        "properties.authMode", mode, arm_spelling=True, allowed=config["allowedAuthModes"]
    )


auth_mode_valid = resource_policy(
    "auth-mode-valid",
    "An endpoint's auth mode is one of allowedAuthModes (default: key, aml_token, aad_token).",
    ENDPOINTS,
    _auth_mode,
    AUTH_MODE_SCHEMA,
)


# --- stack policies: what needs more than one resource ----------------------------------------

def by_endpoint(resources: Iterable[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for resource in resources:
        name = endpoint_name_of(resource)
        if name is not None:
            grouped[name].append(resource)
    return grouped


def deployment_names(resources: Iterable[Any]) -> list[str]:
    return [r.props.get("deploymentName") for r in resources if r.resource_type in DEPLOYMENTS]


def stack_policy(
    name: str,
    description: str,
    check: Callable[[str, list[Any], dict[str, Any], ReportViolation], None],
    schema: PolicyConfigSchema | None = None,
) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        config = knobs(args, schema)
        for endpoint, resources in by_endpoint(args.resources).items():
            check(endpoint, resources, config, report_violation)

    return StackValidationPolicy(
        name=name,
        description=description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=schema,
    )


def _traffic_targets(endpoint: str, resources: list[Any], _config: dict, report_violation: ReportViolation):
    existing = deployment_names(resources)
    for resource in resources:
        found = traffic_of(resource)
        if found is not None:
            problems = rules.traffic_target_problems(*found, existing)
            report(report_violation, label(resource), problems, resource.urn)


traffic_targets_exist = stack_policy(
    "traffic-targets-existing-deployments",
    "Live and mirror traffic name only deployments of the same endpoint that this stack deploys.",
    _traffic_targets,
)

MAX_DEPLOYMENTS_SCHEMA = PolicyConfigSchema(
    {"maxDeployments": {"type": "integer", "minimum": 1, "maximum": rules.MAX_DEPLOYMENTS,
                        "default": rules.MAX_DEPLOYMENTS,
                        "description": "Most deployments one endpoint may have (Azure's limit is 20)."}}
)


def _deployment_count(endpoint: str, resources: list[Any], config: dict, report_violation: ReportViolation):
    count = len(deployment_names(resources))
    problems = rules.deployment_count_problems("deployments", count, config["maxDeployments"])
    report(report_violation, f"endpoint {endpoint}", problems)


max_deployments = stack_policy(
    "max-deployments-per-endpoint",
    "An endpoint has at most maxDeployments deployments (never above 20).",
    _deployment_count,
    MAX_DEPLOYMENTS_SCHEMA,
)


def _is_kubernetes(resources: list[Any]) -> bool:
    for resource in resources:
        properties = resource.props.get("properties") or {}
        if resource.resource_type == ENDPOINT and properties.get("compute"):
            return True
        if resource.resource_type == DEPLOYMENT and properties.get("endpointComputeType") == "Kubernetes":
            return True
    return False


def _kubernetes_mirror(endpoint: str, resources: list[Any], _config: dict, report_violation: ReportViolation):
    if not _is_kubernetes(resources):
        return
    for resource in resources:
        found = traffic_of(resource)
        if found is not None:
            report(report_violation, label(resource), rules.kubernetes_mirror_problems("mirrorTraffic", found[1]), resource.urn)


no_mirror_on_kubernetes = stack_policy(
    "no-mirror-on-kubernetes",
    "Kubernetes online endpoints (a compute target, or Kubernetes deployments) take no mirror traffic.",
    _kubernetes_mirror,
)

POLICIES = [
    traffic_valid,
    names_valid,
    instance_count_in_range,
    request_timeout_limit,
    auth_mode_valid,
    traffic_targets_exist,
    max_deployments,
    no_mirror_on_kubernetes,
]
