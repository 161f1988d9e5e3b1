"""`mlcanary rollout --stack` end to end without Azure: the fake `pulumi` CLI (tests/fake_pulumi_cli.py)
under the real Automation API, the ARM reads and Azure Monitor faked with Azure's rules
(tests/fake_azure_monitor.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mlcanary.cli import main
from fake_azure_monitor import FakeArm, FakeAzureMonitor, microsoft_definitions
from test_rollout_azure_stack import log, project  # noqa: F401 - the fixture: a tmp project + fake pulumi

ENDPOINT_ID = ("/subscriptions/sub-1/resourceGroups/ml-prod-rg/providers/Microsoft.MachineLearningServices/"
               "workspaces/ml-prod-ws/onlineEndpoints/fraud-scorer")


class GrowingSource:
    """Azure Monitor's counts as the runner sees them: every reading adds requests to both deployments."""

    def __init__(self, green_errors: int = 0):
        from mlcanary.rollout.counts import Counts, DeploymentCounts

        self.Counts, self.DeploymentCounts = Counts, DeploymentCounts
        self.total = {"blue": DeploymentCounts(), "green": DeploymentCounts()}
        self.green_errors = green_errors

    def read(self):
        self.total = {
            "blue": self.total["blue"] + self.DeploymentCounts(self.Counts(50)),
            "green": self.total["green"] + self.DeploymentCounts(self.Counts(50, self.green_errors, self.green_errors)),
        }
        return dict(self.total)


@pytest.fixture
def arm(mocker):
    """The endpoint lives in eastus; the stage's azure-native:location says westus2."""
    fake = FakeArm(ENDPOINT_ID, "eastus")
    mocker.patch("mlcanary.components.arm.ArmClient", return_value=fake)
    return fake


def rollout(project, *args, env=None):
    """--apply-stage: on Azure the stack cannot be compared with the stage file without an update (docs/rollout.md)."""
    return CliRunner().invoke(main, ["rollout", str(project / "stage.yaml"), "--to", "green", "--steps", "50,100",
                                     "--stack", "prod", "--apply-stage", *args], env={"ARM_SUBSCRIPTION_ID": "sub-1", **(env or {})})


@pytest.mark.parametrize("green_errors, exit_code, last_up", [(0, 0, "100 %"), (10, 1, "rollback")],
                         ids=["promoted", "rolled_back"])
def test_an_azure_rollout_runs_pulumi_up_per_step_with_azure_monitor_metrics(
        mocker, project, arm, green_errors, exit_code, last_up):
    source = mocker.patch("mlcanary.rollout.sources.azure_source", return_value=GrowingSource(green_errors))
    result = rollout(project, "--interval", "1s", "--tick", "0.1", "--min-requests", "10", "--format", "json",
                     "--rule", "error_rate < 0.05")
    assert result.exit_code == exit_code, result.output
    monitor, _ = source.call_args.args
    assert monitor.resource_id == ENDPOINT_ID and monitor.host == "https://eastus.metrics.monitor.azure.com"
    ups = [entry for entry in log(project.parent) if entry["command"] == "up"]
    assert ups[0]["message"] == "mlcanary rollout: stage.yaml" and ups[-1]["message"] == f"mlcanary rollout: {last_up}"
    assert all(u["refresh"] for u in ups)
    assert "every tick re-reads the last 10 closed minutes" in result.stderr  # the delay the judge works with
    final = {"100 %": {"blue": 0, "green": 100}, "rollback": {"blue": 100, "green": 0}}[last_up]
    assert ups[-1]["config"]["mlcanary:endpoint"]["traffic"] == final


def test_plan_only_prints_the_metric_queries_and_the_config_of_each_step(project, arm):
    """Done-when of issue 14: resource, regional host, metric, aggregation, filter; the config per step."""
    result = rollout(project, "--plan-only")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"metrics: Azure Monitor https://eastus.metrics.monitor.azure.com, resource {ENDPOINT_ID}" in out
    assert ("RequestsPerMinute: aggregation Average, filter \"deployment eq '*' and statusCodeClass eq '*'\", "
            "interval PT1M, max_results 200") in out
    assert "RequestLatency_P99: aggregation Average, filter \"deployment eq '*'\"" in out
    assert "re-reads the last 10 closed minutes" in out
    config_lines = [line for line in out.splitlines() if line.startswith("  ") and '"mlcanary:endpoint"' in line]
    assert [line.split(":")[0].strip() for line in config_lines] == ["stage.yaml", "50 %", "100 %", "rollback"]
    assert json.loads(config_lines[1].split(": ", 1)[1])["mlcanary:endpoint"]["traffic"] == {"blue": 50, "green": 50}
    assert not log(project.parent)  # nothing written, no update


def test_plan_only_as_json_carries_the_queries_and_the_set_all_json_of_each_step(project, arm):
    result = rollout(project, "--plan-only", "--format", "json")
    assert result.exit_code == 0, result.output
    azure = json.loads(result.output)["azure"]
    assert azure["metrics"]["host"] == "https://eastus.metrics.monitor.azure.com"
    assert {q["metric"]: q["aggregation"] for q in azure["metrics"]["queries"]}["RequestsPerMinute"] == "Average"
    rollback = azure["config"][-1]["setAllJson"]["mlcanary:endpoint"]
    assert json.loads(rollback["value"]) == rollback["objectValue"] and rollback["secret"] is False


def test_metrics_region_overrides_the_lookup(project, arm):
    result = rollout(project, "--plan-only", "--metrics-region", "northeurope")
    assert result.exit_code == 0, result.output
    assert "https://northeurope.metrics.monitor.azure.com" in result.output


def test_a_rollout_refuses_to_start_when_the_metrics_cannot_be_judged(project, mocker):
    fake = FakeArm(ENDPOINT_ID, "eastus", definitions=microsoft_definitions(requests_dimensions=("deployment",)))
    mocker.patch("mlcanary.components.arm.ArmClient", return_value=fake)
    result = rollout(project, "--interval", "1s")
    assert result.exit_code == 2
    assert "error: Azure Monitor cannot give the judges what they need" in result.output
    assert "RequestsPerMinute: cannot be split by statusCodeClass" in result.output
    assert not log(project.parent)  # nothing was changed


def test_a_rollout_without_the_subscription_is_refused(project, arm):
    result = CliRunner().invoke(main, ["rollout", str(project / "stage.yaml"), "--to", "green", "--stack", "prod"],
                                env={"ARM_SUBSCRIPTION_ID": "", "AZURE_SUBSCRIPTION_ID": ""})
    assert result.exit_code == 2 and "error: Azure Monitor needs the subscription: set ARM_SUBSCRIPTION_ID" in result.output


def test_the_real_source_reads_the_regional_host_it_was_planned_for(mocker, arm):
    """azure_source builds MetricsClient on the plan's host with the ARM_* credential."""
    from mlcanary.rollout.sources import monitor_plan, azure_source

    made = {}

    def metrics_client(host, credential):
        made["host"] = host
        return FakeAzureMonitor(host, {ENDPOINT_ID: "eastus"}, microsoft_definitions(), clock=None)

    mocker.patch("azure.monitor.querymetrics.MetricsClient", side_effect=metrics_client)
    source = azure_source(monitor_plan(arm, ENDPOINT_ID, None), arm)
    assert made["host"] == "https://eastus.metrics.monitor.azure.com" and source.plan.region == "eastus"
