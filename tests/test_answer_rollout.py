"""`mlcanary rollout --compare-path` on the local target under load: a green that is healthy and fast but
answers wrong is rolled back in the mirror phase, before any client gets one of its answers.

Blue answers right (tests/answer_model); green answers a constant, 5 % of answers off by 50 %, answers
within 0.5 % (a 1 % tolerance promotes it), or changes the answer's shape. Bad options are refused
before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_rollout_cli import STAGE_3, run
from test_rollout_local import REQUEST, events, live_traffic, load_args, rollout, runtime  # noqa: F401 (fixture)

MODEL = Path(__file__).parent / "answer_model"
MIRROR = ("--mirror", "50", "--steps", "50,100", "--interval", "2s", "--min-requests", "10")


def deployment(**env: str) -> dict:
    return {"model": str(MODEL / "model"), "code": str(MODEL / "code"), "scoringScript": "score.py",
            "environmentVariables": dict(env)}


def stage(tmp_path: Path, endpoint: str, green_env: dict, rollout_config: dict | None = None) -> Path:
    config = {"mlcanary:target": "local",
              "mlcanary:endpoint": {"name": endpoint, "deployments": {"blue": deployment(), "green": deployment(**green_env)},
                                    "traffic": {"blue": 100, "green": 0}}}
    if rollout_config:
        config["mlcanary:rollout"] = rollout_config
    path = tmp_path / f"{endpoint}.yaml"
    path.write_text(yaml.safe_dump({"config": config}))
    return path


@pytest.fixture
def endpoint(runtime, request):  # noqa: F811
    name = request.node.name.removeprefix("test_").replace("_", "-")[:24].rstrip("-")
    yield name
    if name in runtime.status()["endpoints"]:
        runtime.delete_endpoint(name)


def rolled_back_in_mirror(result) -> dict:
    assert result.returncode == 1 and result.stdout, result.stderr
    summary = json.loads(result.stdout)
    assert summary["decision"] == "rolled back" and summary["step"] == "mirror 50 %", summary
    assert summary["failure"]["judge"] == "answers" and summary["failure"]["what"] == "output agreement"
    clients = summary["clientRequests"]
    assert clients["sent"] > 0 and clients["byDeployment"].get("green", 0) == 0  # no client got a green answer
    return summary


def test_a_green_that_answers_a_constant_is_rolled_back_in_the_mirror_phase(runtime, endpoint, tmp_path):  # noqa: F811
    record = tmp_path / "record.jsonl"
    result = rollout(runtime, stage(tmp_path, endpoint, {"ANSWER": "constant"}), "--to", "green", *MIRROR,
                     "--mirror-for", "20s", "--compare-path", "scores", *load_args(40), record=record)
    summary = rolled_back_in_mirror(result)
    assert "compared answers disagreed" in summary["failure"]["message"]
    assert summary["answers"]["compared"] > summary["answers"]["agreed"] == 0
    samples = [s for e in events(record) if e["event"] == "judgement" for s in e["answers"].get("samples", ())]
    assert samples and samples[0]["mirrorValue"] == "[0.5, 0.5]" and len(samples[0]["request"]) == 16
    assert live_traffic(runtime, endpoint) == {"blue": 100}
    assert runtime.answers(endpoint)["settings"] is None  # the rollout stopped comparing when it ended


def test_a_green_with_five_percent_of_answers_off_by_half_is_rolled_back(runtime, endpoint, tmp_path):  # noqa: F811
    # 5 % disagreeing against the 1 % allowed: about 100 compared pairs on average (bench/judge.py); 40 s of
    # up to 25 mirrored requests/s leave room for a loaded machine's slower load.
    result = rollout(runtime, stage(tmp_path, endpoint, {"OFF_RATE": "0.05"}), "--to", "green", *MIRROR,
                     "--mirror-for", "40s", "--compare-path", "scores", *load_args(50))
    summary = rolled_back_in_mirror(result)
    assert "(outside tolerance)" in summary["failure"]["message"]


def test_a_green_whose_answers_change_shape_is_rolled_back(runtime, endpoint, tmp_path):  # noqa: F811
    result = rollout(runtime, stage(tmp_path, endpoint, {"ANSWER": "dict"}), "--to", "green", *MIRROR,
                     "--mirror-for", "20s", "--compare-path", "$.scores", *load_args(40))
    summary = rolled_back_in_mirror(result)
    assert "$.scores: shape: live list, mirror object" in summary["failure"]["message"]


def test_a_green_within_tolerance_is_promoted_through_mirror_and_live_steps(runtime, endpoint, tmp_path):  # noqa: F811
    record, plot = tmp_path / "record.jsonl", tmp_path / "rollout.png"
    path = stage(tmp_path, endpoint, {"SCALE": "1.005"}, {"compare": {"path": "scores", "tolerance": 0.01}})
    result = rollout(runtime, path, "--to", "green", *MIRROR, "--mirror-for", "3s", "--alpha", "0.001",
                     "--plot", str(plot), *load_args(40), record=record)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["decision"] == "promoted" and live_traffic(runtime, endpoint) == {"green": 100}
    assert summary["answers"]["compared"] > 0 and summary["answers"]["agreed"] == summary["answers"]["compared"]
    windows = [e["answers"] for e in events(record) if e["event"] == "judgement"]
    assert any(w.get("targetOutputs") for w in windows)  # live steps judged the output distribution too
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hint:" not in result.stderr


def test_an_absolute_tolerance_from_the_stack_config_lets_a_green_ten_percent_off_through(runtime, endpoint, tmp_path):  # noqa: F811
    """compare.tolerance "abs:0.2": scores (0..1) multiplied by 1.1 stay within 0.2 of blue's, in the mirror
    phase's pairs and in the live steps' distribution test."""
    record = tmp_path / "record.jsonl"
    path = stage(tmp_path, endpoint, {"SCALE": "1.1"}, {"compare": {"path": "scores", "tolerance": "abs:0.2"}})
    result = rollout(runtime, path, "--to", "green", *MIRROR, "--mirror-for", "3s", "--alpha", "0.001",
                     *load_args(40), record=record)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["decision"] == "promoted" and summary["answers"]["compare"]["tolerance"] == "abs:0.2"
    assert summary["answers"]["compared"] >= 10 and summary["answers"]["agreed"] == summary["answers"]["compared"]
    plan = next(e for e in events(record) if e["event"] == "plan")["plan"]
    assert plan["compare"] == {"path": "scores", "tolerance": "abs:0.2", "maxDisagreement": None}


def test_a_green_that_agrees_exactly_is_promoted_on_the_whole_answer(runtime, endpoint, tmp_path):  # noqa: F811
    result = rollout(runtime, stage(tmp_path, endpoint, {}), "--to", "green", *MIRROR, "--mirror-for", "3s",
                     "--compare-path", "$", "--max-disagreement", "0", "--alpha", "0.001", *load_args(40))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decision"] == "promoted"


def test_a_green_whose_output_moved_by_ten_percent_is_rolled_back_in_a_live_step(runtime, endpoint, tmp_path):  # noqa: F811
    """No mirror phase: the output distributions of the same windows are compared (here one number per side)."""
    result = rollout(runtime, stage(tmp_path, endpoint, {"SCALE": "1.1"}), "--to", "green", "--steps", "50,100",
                     "--interval", "3s", "--min-requests", "10", "--max-hold", "10", "--compare-path", "scores",
                     *load_args(60))
    assert result.returncode == 1 and result.stdout, result.stderr
    summary = json.loads(result.stdout)
    assert summary["step"] == "50 %" and summary["failure"]["what"] == "output distribution", summary
    assert "distributed unlike the baseline's" in summary["failure"]["message"]
    assert live_traffic(runtime, endpoint) == {"blue": 100}


# --- options: refused before anything runs, or a hint --------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--output-tolerance", "0.01"], "--output-tolerance: needs a compare path (--compare-path or compare.path)"),
    (["--max-disagreement", "0.05"], "--max-disagreement: needs a compare path (--compare-path or compare.path)"),
    (["--compare-path", "$..scores"], "--compare-path: compare path '$..scores': cannot read it from '..scores'"),
    (["--compare-path", "scores", "--output-tolerance", "5%"], "--output-tolerance: output tolerance '5%': '5%' is not a number"),
    (["--compare-path", "scores", "--max-disagreement", "1"], "--max-disagreement: the share of compared answers allowed"),
    (["--compare-path", "scores", "--max-disagreement", "-0.1"], "--max-disagreement: the share of compared answers allowed"),
    (["--rule", "output_agreement < 0.9"], "output_agreement is a share that should be high: use > or >="),
], ids=["tolerance_without_path", "max_disagreement_without_path", "bad_path", "bad_tolerance",
        "max_disagreement_one", "max_disagreement_negative", "agreement_rule_upside_down"])
def test_bad_compare_options_exit_2_naming_the_option(args, message, tmp_path):
    result = run(STAGE_3, "--to", "green", *args, "--plan-only", state=tmp_path / "state")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "state").exists()


def test_a_bad_compare_path_in_the_stack_config_is_named_there(tmp_path):
    path = stage(tmp_path, "cfg", {}, {"compare": {"path": "$[x]"}})
    result = run(str(path), "--to", "green", "--plan-only")
    assert result.exit_code == 2 and "mlcanary:rollout.compare.path: compare path '$[x]'" in result.output


def test_a_mirror_phase_without_comparison_prints_a_hint(tmp_path):
    result = run(STAGE_3, "--to", "green", "--mirror", "10", "--mirror-for", "30s", "--plan-only")
    assert result.exit_code == 0, result.output
    assert "hint: the mirror phase judges errors and latency only; add --compare-path" in result.output
    with_path = run(STAGE_3, "--to", "green", "--mirror", "10", "--mirror-for", "30s", "--compare-path", "$", "--plan-only")
    assert with_path.exit_code == 0 and "hint:" not in with_path.output


def test_the_rehearse_table_shows_agreement_for_mirrored_stages(runtime, tmp_path):  # noqa: F811
    import subprocess
    import sys

    dark = stage(tmp_path, "rehearse-answers", {"ANSWER": "constant"})
    config = yaml.safe_load(dark.read_text())
    config["config"]["mlcanary:endpoint"]["mirrorTraffic"] = {"green": 50}
    mirrored = tmp_path / "mirrored.yaml"
    mirrored.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "mlcanary.cli", "rehearse", str(dark), str(mirrored), "--requests", "20",
                             "--request-file", str(REQUEST), "--compare-path", "scores", "--format", "json",
                             "--state-dir", str(runtime.root)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)
    assert "agreed" not in first["deployments"]["green"]
    # 10 copies are mirrored; on a loaded machine the router may shed one whose slot is still busy
    # (it is then neither mirrored nor compared): every copy green got is compared, none agrees.
    green = second["deployments"]["green"]
    assert 8 <= green["mirrored"] <= 10 and green["compared"] == green["mirrored"] and green["agreed"] == 0
    assert "rehearse-answers" not in runtime.status()["endpoints"]  # --down (default) removed what it created


@pytest.mark.parametrize("args, message", [
    (["--compare-path", "$..x"], "--compare-path: compare path '$..x'"),
    (["--output-tolerance", "lots"], "--output-tolerance: output tolerance 'lots'"),
], ids=["bad_path", "bad_tolerance"])
def test_rehearse_refuses_bad_compare_options_before_anything_starts(args, message, tmp_path):
    from click.testing import CliRunner

    from mlcanary.cli import main

    result = CliRunner().invoke(main, ["rehearse", STAGE_3, *args, "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "state").exists()


def test_the_documented_constant_green_example_is_rolled_back_in_the_mirror_phase(runtime, tmp_path):  # noqa: F811
    """docs/answers.md's example, run as written (its record goes to tmp_path): the sample model as blue,
    samples/constant-green (Microsoft's tutorial's constant green) as green."""
    import re
    import shlex

    from conftest import PROJECT_DIR

    doc = (PROJECT_DIR / "docs" / "answers.md").read_text()
    command = re.search(r"^\$ (mlcanary rollout .*?)$", doc.replace("\\\n", " "), flags=re.M).group(1)
    args = shlex.split(command)[2:]
    args[args.index("--record") + 1] = str(tmp_path / "constant.jsonl")
    args = [str(PROJECT_DIR / a) if a.startswith(("stacks/", "samples/")) else a for a in args]
    try:
        result = rollout(runtime, Path(args[0]), *args[1:])
        summary = json.loads(result.stdout)
        assert result.returncode == 1 and summary["step"] == "mirror 20 %", result.stderr
        assert summary["failure"]["what"] == "output agreement" and "0.5 (outside tolerance)" in summary["failure"]["message"]
        assert summary["clientRequests"]["byDeployment"].get("green", 0) == 0
    finally:
        if "fraud-scorer" in runtime.status()["endpoints"]:
            runtime.delete_endpoint("fraud-scorer")


def test_the_rehearse_text_table_has_an_answers_agreed_column_for_mirrored_stages_only():
    from rich.console import Console

    from mlcanary.local_runtime.rehearse import DeploymentReport, StageReport
    from mlcanary.rehearse_cli import _print_report

    def table(report: StageReport) -> str:
        console = Console(record=True, width=140)
        _print_report(console, report)
        return console.export_text()

    mirrored = table(StageReport("mirrored.yaml", 40, [DeploymentReport("blue", 100, 0, answered=40),
                                                       DeploymentReport("green", 0, 50, mirrored=20, compared=20, agreed=0)]))
    header, green = next(l for l in mirrored.splitlines() if "deployment" in l), next(
        l for l in mirrored.splitlines() if "green" in l)
    assert "answers agreed" in header and green.rstrip(" │").endswith("0/20")
    dark = table(StageReport("dark.yaml", 40, [DeploymentReport("blue", 100, 0, answered=40),
                                               DeploymentReport("green", 0, 0)]))
    assert "answers agreed" not in dark
