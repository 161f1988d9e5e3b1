"""The typed, immutable spec of one stack: the endpoint, its deployments and its traffic.

`load_stack_config` is the only way in: it takes the `mlcanary:*` config values, reads any Azure ML
CLI v2 deployment YAML files they point to, checks types with pydantic and every endpoint rule with
`mlcanary.components.rules`, and either returns a `StackSpec` or raises `SpecError` listing every problem,
each naming its config path (`mlcanary:endpoint.deployments.green.instanceCount`) and what is
allowed. Nothing is registered with Pulumi before this has passed.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError
from pydantic.alias_generators import to_camel

from mlcanary.components import rules
from mlcanary.components.content_digest import folder_problem
from mlcanary.components.deployment_yaml import read_deployment_yaml
from mlcanary.components.rules import Problem
from mlcanary.components.rollout_spec import RolloutSpec, rollout_problems
from mlcanary.components.stage_file import described_base
from mlcanary.components.user_files import UnusableFile, read_conda_file, shown_path

NAMESPACE = "mlcanary"
CONFIG_KEYS = ("target", "endpoint", "rollout")
ENDPOINT_FIELD = f"{NAMESPACE}:endpoint"


class SpecError(ValueError):
    """The stack config is invalid; `problems` lists every broken rule with its config path."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _whole_number_or_unchanged(value: Any) -> Any:
    """Whole floats (wire numbers: Pulumi and the policy engine send 2.0) become ints. Text is not a
    number, even "10" quoted: numbers are written as plain ASCII digits (safe_yaml refuses YAML 1.1's
    octal, hex and base-60 forms), so what a stage file says is what a number is."""
    number = rules.whole_number(value)
    return value if number is None else number


WholeNumber = Annotated[int, Strict(), BeforeValidator(_whole_number_or_unchanged)]


class _Spec(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=False
    )


class RequestSettings(_Spec):
    request_timeout_ms: WholeNumber | None = None
    max_concurrent_requests_per_instance: WholeNumber | None = None
    max_queue_wait_ms: WholeNumber | None = None


class Probe(_Spec):
    """Probe settings in seconds, as the Azure ML CLI YAML has them."""

    initial_delay: WholeNumber | None = None
    period: WholeNumber | None = None
    timeout: WholeNumber | None = None
    success_threshold: WholeNumber | None = None
    failure_threshold: WholeNumber | None = None


class InlineEnvironment(_Spec):
    """An environment defined in place: a base image and, optionally, a conda file.

    With `name` and `version` it is registered as that environment version (as `az ml` does with an
    inline environment that names itself); without, as a content-addressed one.
    """

    image: str
    conda_file: str | None = None
    name: str | None = None
    version: str | None = None
    description: str | None = None


class ScaleSettings(_Spec):
    """`default` (a fixed instance count), or Kubernetes-only `target_utilization` autoscaling."""

    type: Literal["default", "target_utilization"] = "default"
    min_instances: WholeNumber | None = None
    max_instances: WholeNumber | None = None
    polling_interval: WholeNumber | None = None
    target_utilization_percentage: WholeNumber | None = None


class ResourceQuantities(_Spec):
    """Kubernetes quantities as strings, e.g. cpu "0.5", memory "1Gi", gpu "1"."""

    cpu: str | None = None
    memory: str | None = None
    gpu: str | None = None


class ContainerResources(_Spec):
    requests: ResourceQuantities | None = None
    limits: ResourceQuantities | None = None


def _environment_text(value: Any) -> Any:
    """Environment variable values as `az ml` takes them from YAML: numbers and booleans are sent as
    text (Azure stores every value as a string; .NET spells booleans True/False)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return str(value)
    return value


EnvironmentValue = Annotated[str, BeforeValidator(_environment_text)]


def _collection_switch(value: Any) -> Any:
    """`enabled` as azure-ai-ml reads it: the text 'true' or 'false' in any case ('True' in Microsoft's
    samples); a YAML or Pulumi-config boolean means the same here."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _version_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


CollectionSwitch = Annotated[bool, Strict(), BeforeValidator(_collection_switch)]
Share = Annotated[float, Strict()]


class CollectionData(_Spec):
    """The data asset a collection's files are registered as (`az ml` registers one per collection:
    name `<endpoint>-<deployment>-<collection>`, version 1, path under modelDataCollector, unless set)."""

    name: str | None = None
    path: str | None = None
    version: Annotated[str | None, BeforeValidator(_version_text)] = None


class DataCollection(_Spec):
    enabled: CollectionSwitch
    client_id: str | None = None
    data: CollectionData | None = None


class RequestLogging(_Spec):
    capture_headers: list[str] | None = None


class DataCollector(_Spec):
    """Azure ML's data collector (`data_collector` in CLI files): `request`/`response` collections log the
    HTTP payloads, any other name is custom logging from the scoring script (azureml-ai-monitoring)."""

    collections: dict[str, DataCollection]
    rolling_rate: Annotated[Literal["minute", "hour", "day"] | None,
                            BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)] = None
    sampling_rate: Share | None = None
    request_logging: RequestLogging | None = None


class DeploymentSpec(_Spec):
    type: Literal["managed", "kubernetes"] = "managed"
    model: str | None = None
    model_type: Literal["custom_model", "mlflow_model", "triton_model"] = "custom_model"
    model_name: str | None = None
    model_version: str | None = None
    model_description: str | None = None
    model_mount_path: str | None = None
    code: str | None = None
    scoring_script: str | None = None
    environment: str | InlineEnvironment | None = None
    instance_type: str | None = None
    instance_count: WholeNumber = 1
    request_settings: RequestSettings | None = None
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    scale_settings: ScaleSettings | None = None
    resources: ContainerResources | None = None
    environment_variables: dict[str, EnvironmentValue] = {}
    app_insights_enabled: bool | None = None
    egress_public_network_access: Literal["enabled", "disabled"] | None = None
    data_collector: DataCollector | None = None
    description: str | None = None
    tags: dict[str, str] = {}


class EndpointIdentity(_Spec):
    """The endpoint's managed identity, as azure-ai-ml's endpoint `identity` sends it: the scoring
    script reaches other Azure resources with it. Absent: system-assigned (azure-ai-ml's default)."""

    type: Literal["system_assigned", "user_assigned", "none"]
    user_assigned_identities: list[str] = []


USER_ASSIGNED_IDENTITY = re.compile(
    r"^/subscriptions/[^/]+/resource[gG]roups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$")


class EndpointSpec(_Spec):
    name: str
    resource_group: str | None = None
    workspace: str | None = None
    auth_mode: str = "key"
    description: str | None = None
    tags: dict[str, str] = {}
    compute: str | None = None
    identity: EndpointIdentity | None = None
    deployments: dict[str, DeploymentSpec] = {}
    traffic: dict[str, WholeNumber] = {}
    mirror_traffic: dict[str, WholeNumber] = {}

    @property
    def is_kubernetes(self) -> bool:
        return self.compute is not None

    @property
    def live_traffic(self) -> dict[str, int]:
        """Live traffic with every deployment present (0 where the config leaves it out)."""
        return {name: self.traffic.get(name, 0) for name in self.deployments}


class StackSpec(_Spec):
    target: Literal["azure", "local"] = "azure"
    endpoint: EndpointSpec
    rollout: RolloutSpec | None = None  # the plan of `mlcanary rollout` (components/rollout_spec.py)


def load_stack_config(config: Mapping[str, Any], base_dir: Path) -> StackSpec:
    """Validate the `mlcanary:*` config values (keys without the namespace) of one stack.

    Relative paths (model, code, conda file, deployment YAML) resolve from `base_dir`, the Pulumi
    project directory, except paths inside a deployment YAML, which resolve from that file's folder.
    """
    problems = [
        Problem(f"{NAMESPACE}:{rules.shown_text(str(key))}", f"unknown config key; allowed: {', '.join(CONFIG_KEYS)}")
        for key in config
        if key not in CONFIG_KEYS
    ]
    if "endpoint" not in config:
        problems.append(Problem(ENDPOINT_FIELD, "required: the endpoint object is missing"))
    if problems:
        raise SpecError(problems)

    raw_endpoint = config["endpoint"]
    if not isinstance(raw_endpoint, Mapping):
        raise SpecError([Problem(ENDPOINT_FIELD, f"must be an object, got {rules.shown(raw_endpoint)}")])
    # Unreadable deployment files stop here; disagreements with the files are reported with the rest.
    endpoint, unreadable, disagreements = _expand_deployments(raw_endpoint, base_dir)
    if unreadable:
        raise SpecError(unreadable + disagreements)

    raw = {"endpoint": endpoint}
    for key in ("target", "rollout"):
        if key in config:
            raw[key] = config[key]
    try:
        spec = StackSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(disagreements + [_problem_from_pydantic(e) for e in err.errors()]) from None
    problems = disagreements + stack_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def stack_problems(spec: StackSpec) -> list[Problem]:
    """Every endpoint rule the types alone cannot express, with config paths."""
    endpoint = spec.endpoint
    field = ENDPOINT_FIELD
    problems = rules.name_problems(rules.join(field, "name"), endpoint.name, "endpoint name")
    problems += rules.auth_mode_problems(rules.join(field, "authMode"), endpoint.auth_mode)
    problems += _identity_problems(rules.join(field, "identity"), endpoint.identity)
    on_azure = spec.target == "azure"
    if on_azure:
        for key, value in (("resourceGroup", endpoint.resource_group), ("workspace", endpoint.workspace)):
            if not value:
                problems.append(
                    Problem(rules.join(field, key), "required on the azure target (the Azure ML workspace to deploy into)")
                )
    problems += rules.deployment_count_problems(
        rules.join(field, "deployments"), len(endpoint.deployments)
    )
    if not on_azure and endpoint.is_kubernetes:
        problems.append(Problem(rules.join(field, "compute"), "Kubernetes endpoints are not served on the local target"))
    if endpoint.is_kubernetes and endpoint.auth_mode == "aad_token":
        problems.append(
            Problem(rules.join(field, "authMode"), "aad_token is supported on managed endpoints only; "
                    "a Kubernetes endpoint takes key or aml_token")
        )
    for name, deployment in endpoint.deployments.items():
        deployment_field = rules.join(field, "deployments", name)
        if on_azure:
            problems += _azure_problems(deployment_field, deployment)
        else:
            problems += _local_problems(deployment_field, deployment)
        problems += _deployment_problems(deployment_field, name, deployment, endpoint)
    problems += rules.traffic_problems(
        endpoint.traffic, endpoint.mirror_traffic, endpoint.deployments, field=field
    )
    if endpoint.is_kubernetes:
        problems += rules.kubernetes_mirror_problems(
            rules.join(field, "mirrorTraffic"), endpoint.mirror_traffic
        )
    if spec.rollout is not None:
        problems += rollout_problems(spec.rollout, endpoint.deployments, lambda key: f"{NAMESPACE}:rollout.{key}")
    return problems


def _identity_problems(field: str, identity: EndpointIdentity | None) -> list[Problem]:
    if identity is None:
        return []
    ids_field = rules.join(field, "userAssignedIdentities")
    if identity.type == "user_assigned" and not identity.user_assigned_identities:
        return [Problem(ids_field, "required with type user_assigned: the ARM ids of the identities")]
    if identity.type != "user_assigned" and identity.user_assigned_identities:
        return [Problem(ids_field, f"goes with type user_assigned only (type is {identity.type})")]
    return [Problem(ids_field, f"{rules.shown(value)} is not the ARM id of a user-assigned identity: "
                    "/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/"
                    "userAssignedIdentities/<name>")
            for value in identity.user_assigned_identities if not USER_ASSIGNED_IDENTITY.match(value)]


def _local_problems(field: str, deployment: DeploymentSpec) -> list[Problem]:
    """The local target serves a scoring script from a local folder with a local model."""
    problems = []
    if deployment.code is None:
        problems.append(Problem(rules.join(field, "code"), "required on the local target: the folder holding the scoring script"))
    for key, value in (("code", deployment.code), ("model", deployment.model)):
        if value is not None and is_asset_reference(value):
            problems.append(
                Problem(rules.join(field, key), f"{rules.shown(value)} is an Azure asset; the local target serves local files: give a path")
            )
    return problems


def _local_code_problems(field: str, deployment: DeploymentSpec) -> list[Problem]:
    """A local code path is a folder holding the scoring script (both targets, as `az ml` demands)."""
    if deployment.code is None or is_asset_reference(deployment.code):
        return []
    code = Path(deployment.code)
    if _is_file(code):
        return [Problem(rules.join(field, "code"), f"'{shown_path(deployment.code)}' is a file; code must be the folder holding the scoring script")]
    if _is_dir(code) and deployment.scoring_script and not _is_file(code / deployment.scoring_script):
        return [Problem(rules.join(field, "scoringScript"),
                        f"{rules.shown(deployment.scoring_script)} not found in {shown_path(deployment.code)}")]
    return []


def _kubernetes_only_problems(field: str, deployment: DeploymentSpec) -> list[Problem]:
    """Scale settings, resources and egress: which kind of deployment takes which."""
    problems = []
    kubernetes = deployment.type == "kubernetes"
    scale = deployment.scale_settings
    if scale is not None:
        scale_field = rules.join(field, "scaleSettings")
        autoscale_keys = ("min_instances", "max_instances", "polling_interval", "target_utilization_percentage")
        if scale.type == "target_utilization" and not kubernetes:
            problems.append(Problem(rules.join(scale_field, "type"),
                                    "target_utilization autoscaling is for kubernetes deployments; managed ones take default"))
        if scale.type == "default" and any(getattr(scale, key) is not None for key in autoscale_keys):
            problems.append(Problem(scale_field, "minInstances, maxInstances, pollingInterval and "
                                    "targetUtilizationPercentage go with type target_utilization"))
        for key, low, high in (("min_instances", 0, rules.MAX_INSTANCE_COUNT), ("max_instances", 1, rules.MAX_INSTANCE_COUNT),
                               ("polling_interval", 1, 3600), ("target_utilization_percentage", 1, 100)):
            value = getattr(scale, key)
            if value is not None:
                problems += rules.integer_range_problems(rules.join(scale_field, to_camel(key)), value, low, high, to_camel(key))
        if scale.min_instances is not None and scale.max_instances is not None and scale.min_instances > scale.max_instances:
            problems.append(Problem(scale_field, f"minInstances ({scale.min_instances}) is above maxInstances ({scale.max_instances})"))
    if deployment.resources is not None and not kubernetes:
        problems.append(Problem(rules.join(field, "resources"), "container requests and limits are for kubernetes deployments; "
                                "a managed deployment's size is its instanceType"))
    if deployment.egress_public_network_access is not None and kubernetes:
        problems.append(Problem(rules.join(field, "egressPublicNetworkAccess"), "is for managed deployments only"))
    return problems


def _model_problems(field: str, deployment: DeploymentSpec) -> list[Problem]:
    """modelName / modelVersion name the version a local model folder is registered as."""
    problems = []
    named = deployment.model_name is not None or deployment.model_version is not None
    if named and (deployment.model is None or is_asset_reference(deployment.model)):
        problems.append(Problem(rules.join(field, "modelName"), "modelName and modelVersion register a local model "
                                "folder; an asset reference already names its version"))
    elif deployment.model_version is not None and deployment.model_name is None:
        # A name without a version is fine: azure-ai-ml registers the next version of that name, as `az ml`
        # does (`_model_operations.py`, `_get_next_version_from_container`).
        problems.append(Problem(rules.join(field, "modelVersion"), "a modelVersion needs the modelName it versions"))
    version = deployment.model_version
    if version is not None and not (version.isascii() and version.isdigit() and int(version) > 0):
        problems.append(Problem(rules.join(field, "modelVersion"), f"a model version is a positive whole number, got {rules.shown(version)}"))
    if deployment.model_name is not None:
        problems += rules.asset_name_problems(rules.join(field, "modelName"), deployment.model_name)
    return problems


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL character
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


# Bounds of probe and request settings, in the spelling of the config (seconds, ms). Azure documents
# only the lower ones; the upper ones keep what the local runtime computes from them (a start limit of
# initialDelay + failureThreshold x period, timers) finite and usable, and `check` enforces them too.
PROBE_BOUNDS = {"initialDelay": (0, 3600), "period": (1, 3600), "timeout": (1, 3600),
                "successThreshold": (1, 1000), "failureThreshold": (1, 1000)}
REQUEST_SETTING_BOUNDS = {"maxConcurrentRequestsPerInstance": (1, 1000), "maxQueueWaitMs": (1, rules.MAX_REQUEST_TIMEOUT_MS)}


def bounded_settings_problems(field: str, settings: Mapping[str, Any], bounds: Mapping[str, tuple[int, int]]) -> list[Problem]:
    """Each setting of `settings` (config spelling) a whole number within its bounds; None means unset."""
    problems = []
    for key, (low, high) in bounds.items():
        value = settings.get(key)
        if value is not None:
            problems += rules.integer_range_problems(rules.join(field, key), value, low, high, key)
    return problems


CLIENT_ID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


def data_collector_problems(field: str, collector: DataCollector) -> list[Problem]:
    """The data collector's values azure-ai-ml's DataCollectorSchema and the REST spec bound."""
    problems = []
    rate = collector.sampling_rate
    if rate is not None and not 0.0 <= rate <= 1.0:
        problems.append(Problem(rules.join(field, "samplingRate"), f"must be a share from 0.0 to 1.0 (1.0 collects "
                                f"every request; azure-ai-ml's DataCollectorSchema), got {rules.shown(rate)}"))
    for name, collection in collector.collections.items():
        collection_field = rules.join(field, "collections", name)
        if not name or "/" in name or name != name.strip():
            problems.append(Problem(collection_field, f"{rules.shown(name)} cannot name a collection: the name is a "
                                    "folder of the blob path (modelDataCollector/<endpoint>/<deployment>/<collection>)"))
        if collection.client_id is not None and not CLIENT_ID.match(collection.client_id):
            problems.append(Problem(rules.join(collection_field, "clientId"), f"{rules.shown(collection.client_id)} is "
                                    "not a client id: the GUID of the managed identity that writes to the storage"))
        data = collection.data
        if data is not None and data.path is not None and not data.path.startswith("azureml://"):
            problems.append(Problem(rules.join(collection_field, "data.path"), f"{rules.shown(data.path)} is not a "
                                    "datastore path: azureml://datastores/<datastore>/paths/<path>"))
    return problems


def _deployment_problems(
    field: str, name: str, deployment: DeploymentSpec, endpoint: EndpointSpec
) -> list[Problem]:
    problems = rules.name_problems(field, name, "deployment name")
    problems += rules.instance_count_problems(rules.join(field, "instanceCount"), deployment.instance_count)
    problems += rules.environment_variable_problems(
        rules.join(field, "environmentVariables"), deployment.environment_variables
    )
    problems += _local_code_problems(field, deployment)
    problems += _kubernetes_only_problems(field, deployment)
    problems += _model_problems(field, deployment)
    if deployment.data_collector is not None:
        problems += data_collector_problems(rules.join(field, "dataCollector"), deployment.data_collector)
    timeout = deployment.request_settings and deployment.request_settings.request_timeout_ms
    if deployment.type == "managed" and timeout is not None:
        problems += rules.request_timeout_problems(
            rules.join(field, "requestSettings.requestTimeoutMs"), timeout
        )
    if deployment.request_settings is not None:
        problems += bounded_settings_problems(rules.join(field, "requestSettings"),
                                              deployment.request_settings.model_dump(by_alias=True), REQUEST_SETTING_BOUNDS)
    for key, probe in (("livenessProbe", deployment.liveness_probe), ("readinessProbe", deployment.readiness_probe)):
        if probe is not None:
            problems += bounded_settings_problems(rules.join(field, key), probe.model_dump(by_alias=True), PROBE_BOUNDS)
    if (deployment.code is None) != (deployment.scoring_script is None):
        problems.append(
            Problem(field, "code and scoringScript go together: give both (a scoring script in a code folder) or neither")
        )
    if deployment.type == "kubernetes" and not endpoint.is_kubernetes:
        problems.append(
            Problem(rules.join(field, "type"), "a kubernetes deployment needs a Kubernetes endpoint: set endpoint.compute")
        )
    if deployment.type == "managed" and endpoint.is_kubernetes:
        problems.append(
            Problem(rules.join(field, "type"), "deployments of a Kubernetes endpoint (endpoint.compute is set) must have type kubernetes")
        )
    return problems


def _azure_problems(field: str, deployment: DeploymentSpec) -> list[Problem]:
    """On the azure target: a VM size, references that pin a version, an environment that is an asset.

    Local model and code paths are fine: they are uploaded and registered (components/uploads.py).
    """
    problems = []
    if not deployment.instance_type and deployment.type == "managed":
        problems.append(
            Problem(rules.join(field, "instanceType"), "required on the azure target: the VM size, e.g. Standard_DS3_v2")
        )
    # A Kubernetes deployment without instanceType runs on the cluster's default instance type: the
    # program sends its name (components/azure_args.py), as azure-native would otherwise send a VM size.
    # A registered model's type is Azure's to know, not the file's: without code it deploys if it is an
    # MLflow or Triton model (as `az ml` lets Azure decide); a local model's type is the file's.
    # Without model and code, an environment alone is a custom container (or a model package).
    local_model = deployment.model is not None and not is_asset_reference(deployment.model)
    if deployment.code is None and deployment.model_type == "custom_model" and local_model:
        problems.append(
            Problem(rules.join(field, "code"), "required for a custom model: the folder with the scoring script "
                    "(only an mlflow_model or triton_model deploys without code)")
        )
    if deployment.model is None and deployment.code is None and deployment.environment is None:
        problems.append(
            Problem(rules.join(field, "model"), "nothing to serve: give model (a registered MLflow or Triton model "
                    "deploys alone; a file that leaves it to `az ml ... --set model=...` needs model here), or code "
                    "and an environment")
        )
    if deployment.code is not None and deployment.environment is None:
        problems.append(
            Problem(rules.join(field, "environment"), "required when code is given: the environment the scoring script runs in")
        )
    named = {"model": deployment.model, "code": deployment.code}
    if isinstance(deployment.environment, str):
        named["environment"] = deployment.environment
    for key, value in named.items():
        if value is None:
            continue
        key_field = rules.join(field, key)
        if key == "environment" and not is_asset_reference(value):
            problems.append(
                Problem(key_field, f"{rules.shown(value)} is not an environment asset: use azureml:<name>:<version>, "
                        "or an inline environment {image, condaFile}")
            )
        elif (
            value.startswith("azureml:")
            and not value.startswith(("azureml://", "azureml:/subscriptions/"))
            and value.count(":") != 2
        ):
            problems.append(
                Problem(key_field, f"{rules.shown(value)} must pin a version: azureml:<name>:<version> (mlcanary's "
                        "pinning policy, not an Azure rule: Azure would take whatever version is latest at deploy "
                        "time, so the stage would not say what runs)")
            )
    return problems


# --- reading deployments given as `file:` and resolving local paths ---------------------------

ASSET_PREFIXES = ("azureml:", "/subscriptions/", "https://", "http://")


def is_asset_reference(value: str) -> bool:
    """An Azure ML asset (azureml:name:version, azureml://registries/..., an ARM id); else a local path."""
    return value.startswith(ASSET_PREFIXES)


def _expand_deployments(
    raw_endpoint: Mapping[str, Any], base_dir: Path
) -> tuple[dict[str, Any], list[Problem], list[Problem]]:
    """Deployments with `file:` read and paths resolved; (endpoint, unreadable, disagreements)."""
    endpoint = dict(raw_endpoint)
    deployments = endpoint.get("deployments")
    if not isinstance(deployments, Mapping):
        return endpoint, [], []  # pydantic reports the wrong type with its path
    problems: list[Problem] = []
    disagreements: list[Problem] = []
    expanded = {}
    for name, raw in deployments.items():
        field = rules.join(ENDPOINT_FIELD, "deployments", str(name))
        if not isinstance(raw, Mapping):
            expanded[name] = raw
            continue
        overrides = _resolve_paths(dict(raw), base_dir, described_base(base_dir), field, problems)
        file = overrides.pop("file", None)
        if file is None:
            expanded[name] = overrides
            continue
        file_field = rules.join(field, "file")
        if not isinstance(file, str):
            problems.append(Problem(file_field, f"must be a path to an Azure ML CLI v2 deployment YAML, got {rules.shown(file)}"))
            continue
        path = _real_path(base_dir, file)
        if path is None:
            problems.append(Problem(file_field, f"{rules.shown(file)} is not a path: it holds a NUL character"))
            continue
        from_file, file_problems = read_deployment_yaml(path, file_field)
        if file_problems and not os.path.lexists(path):
            file_problems = [Problem(p.field, f"{p.message} (relative paths resolve from {described_base(base_dir)})")
                             for p in file_problems]
        problems += file_problems
        if file_problems:
            continue
        _check_file_names(from_file, name, file_field, disagreements)
        expanded[name] = _deep_merge(
            _resolve_paths(from_file, path.parent, f"{path.parent}, the deployment YAML's folder", file_field, problems),
            overrides)
    endpoint["deployments"] = expanded
    return endpoint, problems, disagreements


def _check_file_names(from_file: dict[str, Any], name: str, field: str, problems: list[Problem]) -> None:
    """A deployment YAML's own name must agree with the config that uses it.

    Its `endpoint_name` is not used: the stack's endpoint wins, as `az ml online-deployment create -f
    FILE --endpoint-name X` overrides the file (Microsoft's samples carry `<ENDPOINT_NAME>` there).
    """
    file_name = from_file.pop("name", None)
    if file_name is not None and file_name != name:
        problems.append(
            Problem(field, f"the file names deployment {rules.shown(file_name)} but is used as deployment {rules.shown(name)}; "
                    "make them match")
        )
    from_file.pop("endpointName", None)


def _resolve_paths(
    deployment: dict[str, Any], base: Path, base_named: str, field: str, problems: list[Problem]
) -> dict[str, Any]:
    """Local model/code/conda paths become absolute (from `base`, which `base_named` names for a
    message) and must exist."""

    def resolve(value: Any, key_field: str, hashed: bool = False) -> Any:
        if not isinstance(value, str) or is_asset_reference(value):
            return value
        path = _real_path(base, value)
        if path is None:
            problems.append(Problem(key_field, f"{rules.shown(value)} is not a path: it holds a NUL character"))
            return value
        try:
            path.stat()
        except FileNotFoundError:
            problems.append(Problem(
                key_field, f"local path {rules.shown(value)} does not exist (looked for {shown_path(path)}; relative paths "
                f"resolve from {base_named})"))
        except OSError as err:
            reason = "is a symlink loop" if err.errno == errno.ELOOP else f"cannot be used: {err.strerror}"
            problems.append(Problem(key_field, f"local path {rules.shown(value)} {reason}"))
        else:
            problem = folder_problem(path) if hashed else None  # a code or model folder: before anything hashes it
            if problem:
                problems.append(Problem(key_field, problem))
        return str(path)

    for key in ("model", "code"):
        if key in deployment:
            deployment[key] = resolve(deployment[key], rules.join(field, key), hashed=True)
    environment = deployment.get("environment")
    if isinstance(environment, Mapping) and "condaFile" in environment:
        conda_field, found = rules.join(field, "environment.condaFile"), len(problems)
        conda_file = resolve(environment["condaFile"], conda_field)
        if isinstance(conda_file, str) and len(problems) == found and not is_asset_reference(conda_file):
            try:
                read_conda_file(Path(conda_file))  # its text is sent to Azure: it must be readable
            except UnusableFile as err:
                problems.append(Problem(conda_field, str(err)))
        deployment["environment"] = {**environment, "condaFile": conda_file}
    return deployment


def _real_path(base: Path, value: str) -> Path | None:
    """`value` from `base` with symlinks resolved as far as they go (a loop stays, for stat to name);
    None for a string no path can hold."""
    if "\0" in value:
        return None
    return Path(os.path.realpath(base / value))


def _deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


# --- pydantic errors as problems with config paths --------------------------------------------

def _problem_from_pydantic(error: Mapping[str, Any]) -> Problem:
    loc = [str(part) for part in error["loc"]]
    # Union members add their class name to the path (`environment.str`); the user never wrote it.
    loc = [part for part in loc if part not in ("str", "InlineEnvironment", "int", "float")]
    field = rules.join(f"{NAMESPACE}:{loc[0] if loc else ''}", *loc[1:])
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return Problem(field, f"unknown key; allowed here: {_allowed_keys(loc)}")
    if kind == "missing":
        return Problem(field, "required")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return Problem(field, f"must be a whole number, got {rules.shown(value)}")
    if kind in ("float_type", "float_parsing"):
        return Problem(field, f"must be a number, got {rules.shown(value)}")
    if kind in ("string_type",):
        return Problem(field, f"must be a string, got {rules.shown(value)}")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return Problem(field, f"must be an object (a mapping of keys to values), got {rules.shown(value)}")
    if kind == "literal_error":
        return Problem(field, f"must be one of {error['ctx']['expected']}, got {rules.shown(value)}")
    if kind == "bool_type" or kind == "bool_parsing":
        return Problem(field, f"must be true or false, got {rules.shown(value)}")
    return Problem(field, f"{error['msg']}, got {rules.shown(value)}")


def _allowed_keys(loc: list[str]) -> str:
    """The keys the model at the parent of `loc` accepts, in config spelling."""
    model: Any = StackSpec
    for part in loc[:-1]:
        field_info = model.model_fields.get(_snake(part)) if hasattr(model, "model_fields") else None
        if field_info is None:
            continue  # a dict key such as a deployment name
        model = _model_in(field_info.annotation)
    if not hasattr(model, "model_fields"):
        return "?"
    keys = [f.alias or n for n, f in model.model_fields.items()]
    if model is DeploymentSpec:
        keys.append("file")
    return ", ".join(keys)


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation such as `dict[str, DeploymentSpec] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
