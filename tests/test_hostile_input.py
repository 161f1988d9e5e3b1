"""Hostile and wrong input: refused with one short message and exit 2, never a crash, hang or slip.

Each bad input is its own named case, through the layer a user reaches it by: the spec, the policy
pack, `mlcanary check`, `mlcanary local up`, `mlcanary rehearse` and the local control plane.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import PROJECT_DIR, STAGE_FILES, render_config, stage_config
from mlcanary.check import _analyze, _configured_analyzer, policy_defaults
from mlcanary.cli import main
from mlcanary.components import rules
from mlcanary.components.durations import parse_iso_seconds
from mlcanary.components.spec import SpecError, load_stack_config
from mlcanary.components.stage_file import StageFileError, namespaced, read_stage_file
from mlcanary.policy_config import policy_settings

AZURE_STAGE_1 = PROJECT_DIR / "stacks" / "stage-1-create-blue.yaml"
LOCAL_STAGE_1 = PROJECT_DIR / "stacks" / "local" / "stage-1-create-blue.yaml"
SAMPLES = PROJECT_DIR / "samples"
E = r"mlcanary:endpoint"


def local_stage_text() -> str:
    """Local stage 1 with absolute sample paths, so it can live in any folder."""
    return LOCAL_STAGE_1.read_text().replace("./samples", str(SAMPLES))


def write(folder: Path, text: str | bytes, name: str = "stage.yaml") -> Path:
    """A file in a Pulumi project folder (relative paths in a stage resolve from there)."""
    (folder / "Pulumi.yaml").write_text((PROJECT_DIR / "Pulumi.yaml").read_text())
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def spec_problems(config: dict) -> str:
    with pytest.raises(SpecError) as refused:
        load_stack_config(namespaced(config, "mlcanary"), PROJECT_DIR)
    return str(refused.value)


# --- names match in full ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["blue\n", "blue\r\n", "blue\n\n", "\nblue"], ids=["lf", "crlf", "two_lf", "leading_lf"])
def test_a_name_with_a_line_break_breaks_the_name_rule(name):
    assert rules.name_problems("name", name, "deployment name")


def renamed_deployment(path: Path, new: str) -> dict:
    config = copy.deepcopy(stage_config(path))
    endpoint = config["mlcanary:endpoint"]
    endpoint["deployments"] = {new: endpoint["deployments"]["blue"]}
    endpoint["traffic"] = {new: 100}
    if "./samples" in str(endpoint["deployments"][new].get("code")):
        for key in ("code", "model"):
            endpoint["deployments"][new][key] = endpoint["deployments"][new][key].replace("./samples", str(SAMPLES))
    return config


@pytest.mark.parametrize("stage", [AZURE_STAGE_1, LOCAL_STAGE_1], ids=["azure", "local"])
def test_the_spec_refuses_a_deployment_name_ending_in_a_newline(stage):
    assert r"'blue\n' is not a valid deployment name" in spec_problems(renamed_deployment(stage, "blue\n"))


@pytest.mark.parametrize("stage", [AZURE_STAGE_1, LOCAL_STAGE_1], ids=["azure", "local"])
def test_the_spec_refuses_an_endpoint_name_ending_in_a_newline(stage):
    config = renamed_deployment(stage, "blue")
    config["mlcanary:endpoint"]["name"] = "fraud-scorer\n"
    assert r"mlcanary:endpoint.name: 'fraud-scorer\n' is not a valid endpoint name" in spec_problems(config)


@pytest.mark.parametrize("text", [AZURE_STAGE_1.read_text, local_stage_text], ids=["azure", "local"])
def test_check_refuses_a_stage_whose_deployment_name_ends_in_a_newline(tmp_path, text):
    stage = text().replace("      blue:\n", '      "blue\\n":\n').replace("traffic: {blue: 100}", 'traffic: {"blue\\n": 100}')
    result = CliRunner().invoke(main, ["check", str(write(tmp_path, stage))])
    assert result.exit_code == 2, result.output
    assert r"'blue\n' is not a valid deployment name" in result.output


@pytest.mark.parametrize(
    "resource, key, what",
    [("fraud-scorer-blue", "deploymentName", "deployment name"), ("fraud-scorer", "endpointName", "endpoint name")],
    ids=["deployment", "endpoint"],
)
def test_the_policy_pack_refuses_a_name_ending_in_a_newline(resource, key, what):
    render = copy.deepcopy(render_config(stage_config(STAGE_FILES[0])))
    (registration,) = [r for r in render.resources if r.name == resource and key in r.inputs]
    registration.inputs[key] = registration.inputs[key] + "\n"
    analyzer = _configured_analyzer(policy_settings({}, policy_defaults()))
    found = [v for v in _analyze("stage", render, analyzer) if v.policy == "names-valid"]
    assert found and found[0].enforcementLevel == "mandatory"
    assert f"is not a valid {what}" in found[0].message and r"\n'" in found[0].message


@pytest.mark.parametrize(
    "timeout, shown",
    [("PT\uff11\uff10S", "'PT\uff11\uff10S'"), ("PT" + "9" * 400 + "S", "'PT999"), ("PT5S\n", r"'PT5S\n'"),
     ("PT" + "1" * 100_000 + "X", "'PT111")],
    ids=["full_width_digits", "endless", "trailing_newline", "100_kb"],
)
def test_the_policy_pack_refuses_a_request_timeout_that_is_no_duration(timeout, shown):
    render = copy.deepcopy(render_config(stage_config(STAGE_FILES[0])))
    (deployment,) = [r for r in render.resources if r.name == "fraud-scorer-blue" and "deploymentName" in r.inputs]
    deployment.inputs["properties"]["requestSettings"]["requestTimeout"] = timeout
    analyzer = _configured_analyzer(policy_settings({}, policy_defaults()))
    (found,) = [v for v in _analyze("stage", render, analyzer) if v.policy == "request-timeout-limit"]
    assert "must be an ISO-8601 duration such as PT90S, got " + shown in found.message
    assert len(found.message) < 300


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    from mlcanary.local_runtime.client import RuntimeClient
    from test_local_runtime import stop_runtime

    client = RuntimeClient(tmp_path_factory.mktemp("state"))
    client.ensure_running()
    yield client
    stop_runtime(client)


def test_the_local_control_plane_refuses_an_endpoint_name_ending_in_a_newline(runtime):
    from mlcanary.local_runtime.client import RuntimeRefusal

    with pytest.raises(RuntimeRefusal, match=r"is not a valid endpoint name") as refused:
        runtime.put_endpoint("ep-newline\n", "key")
    assert refused.value.status == 400
    assert runtime.status()["endpoints"] == {}


def test_the_local_control_plane_refuses_a_deployment_name_ending_in_a_newline(runtime):
    from mlcanary.local_runtime.client import RuntimeRefusal
    from test_local_runtime import spec

    runtime.put_endpoint("ep-names", "key")
    with pytest.raises(RuntimeRefusal, match=r"is not a valid deployment name") as refused:
        runtime.put_deployment("ep-names", "dep-a\n", spec("a"))
    assert refused.value.status == 400
    assert runtime.status()["endpoints"]["ep-names"]["deployments"] == {}


@pytest.mark.parametrize("command", [["local", "status"], ["invoke", "--request-file", str(SAMPLES / "request.json")]],
                         ids=["status", "invoke"])
def test_a_100_kb_endpoint_name_on_the_command_line_is_not_echoed_in_full(runtime, command):
    result = CliRunner().invoke(main, [*command, "e" * 100_000, "--state-dir", str(runtime.root)])
    assert result.exit_code == 1, result.output
    assert "not found" in result.output and "(100000 characters)" in result.output and len(result.output) < 500


# --- one safe YAML reader ------------------------------------------------------------------------

def stage_error(tmp_path, text: str | bytes) -> str:
    with pytest.raises(StageFileError) as refused:
        read_stage_file(write(tmp_path, text))
    return str(refused.value)


def test_duplicate_keys_are_refused_with_both_line_numbers(tmp_path):
    text = local_stage_text().replace("    traffic: {blue: 100}", "    traffic: {blue: 100}\n    traffic: {blue: 0}")
    lines = text.splitlines()
    first, second = (i + 1 for i, line in enumerate(lines) if line.startswith("    traffic:"))
    assert stage_error(tmp_path, text) == (
        f"{tmp_path / 'stage.yaml'}: duplicate key 'traffic' at line {second}, column 5 "
        f"(first at line {first}, column 5); a key may appear once in a mapping"
    )


def test_duplicate_keys_in_a_flow_mapping_are_refused(tmp_path):
    text = local_stage_text().replace("traffic: {blue: 100}", "traffic: {blue: 100, blue: 0}")
    assert "duplicate key 'blue' at line" in stage_error(tmp_path, text)


def test_merge_keys_may_be_overridden(tmp_path):
    """`<<: *base` then the same key is YAML's way to override a shared value, not a duplicate."""
    text = local_stage_text().replace(
        "        instanceCount: 1\n", "        <<: &settings {instanceCount: 3}\n        instanceCount: 1\n"
    )
    config = read_stage_file(write(tmp_path, text))
    assert config["mlcanary:endpoint"]["deployments"]["blue"]["instanceCount"] == 1


def test_duplicate_keys_in_a_deployment_file_are_refused(tmp_path):
    (tmp_path / "blue.yml").write_text("name: blue\ninstance_count: 1\ninstance_count: 5\n")
    config = stage_config(AZURE_STAGE_1)
    config["mlcanary:endpoint"]["deployments"]["blue"] = {"file": str(tmp_path / "blue.yml")}
    assert re.search(r"blue\.yml: duplicate key 'instance_count' at line 3, column 1 \(first at line 2, column 1\)",
                     spec_problems(config))


def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes that stand for 9**levels strings once expanded."""
    lines = ["config:", "  mlcanary:endpoint:", "    name: fraud-scorer", "    tags:", '      a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        lines.append(f"      a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    message = stage_error(tmp_path, alias_bomb())
    assert re.fullmatch(
        r".*stage\.yaml: more than 10000 values once YAML aliases are expanded, at line \d+; "
        r"a stage file is a few KB: write the values out or use fewer aliases",
        message,
    ), message


def test_a_stage_with_more_than_10000_values_is_refused(tmp_path):
    text = "config:\n  mlcanary:endpoint:\n    tags: [" + "1, " * 20_000 + "]\n"
    assert stage_error(tmp_path, text).endswith(
        "stage.yaml: more than 10000 values, at line 3; a stage file is a few KB: it holds a few hundred")


def test_an_alias_to_the_collection_it_is_in_is_refused(tmp_path):
    message = stage_error(tmp_path, "config:\n  mlcanary:endpoint: &loop {name: ep, tags: *loop}\n")
    assert "alias *loop at line 2 refers to a collection that contains it" in message


def test_aliases_that_stay_small_are_fine(tmp_path):
    text = local_stage_text().replace("    authMode: key\n", "    authMode: key\n    tags: &t {team: risk}\n")
    text = text.replace("        instanceCount: 1\n", "        instanceCount: 1\n        tags: *t\n")
    config = read_stage_file(write(tmp_path, text))
    assert config["mlcanary:endpoint"]["deployments"]["blue"]["tags"] == {"team": "risk"}


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}")], ids=["lists", "mappings"])
def test_3000_deep_nesting_is_refused_without_a_recursion_error(tmp_path, opening, closing):
    text = "config:\n  mlcanary:endpoint: {tags: " + opening * 3000 + "x" + closing * 3000 + "}\n"
    message = stage_error(tmp_path, text)
    assert re.search(r"stage\.yaml: nested deeper than 50 levels at line 2", message), message


def test_deep_nesting_through_aliases_is_refused(tmp_path):
    lines = ["config:", "  mlcanary:endpoint:", "    tags:", "      l0: &l0 [x]"]
    lines += [f"      l{i}: &l{i} [*l{i - 1}]" for i in range(1, 60)]
    assert "nested deeper than 50 levels" in stage_error(tmp_path, "\n".join(lines) + "\n")


def test_a_stage_file_over_1_mib_is_refused_and_says_why(tmp_path):
    text = local_stage_text() + ("# padding\n" * 120_000)
    message = stage_error(tmp_path, text)
    assert re.fullmatch(r".*stage\.yaml: 1\.1 MiB is too large: a stage file is a few KB \(the limit is 1 MiB\)", message), message


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: os.mkdir(d / "stage.yaml"), r"is a directory, not a stage file"),
        (lambda d: os.mkfifo(d / "stage.yaml"), r"is a named pipe \(FIFO\), not a regular file"),
        (lambda d: (os.symlink("loop-b", d / "stage.yaml"), os.symlink("stage.yaml", d / "loop-b")),
         r"is a symlink loop \(too many levels of symbolic links\)"),
        (lambda d: os.symlink("/dev/zero", d / "stage.yaml"), r"is a device, not a regular file"),
        (lambda d: (d / "stage.yaml").write_bytes(b"config:\n  mlcanary:endpoint: {name: \xe9t\xe9}\n"),
         r"is not UTF-8 text \(byte 0xe9 at offset 36\); save the stage file as UTF-8"),
        (lambda d: (d / "stage.yaml").write_bytes(bytes(range(256)) * 4),
         r"is binary data, not a text stage file \(a NUL byte at offset 0\)"),
        (lambda d: (d / "stage.yaml").write_bytes(b"config:\n  mlcanary:endpoint: \x01\x02\n"),
         r"not valid YAML at line 2, column 22: unacceptable character #x0001 \(special characters are not allowed\)"),
    ],
    ids=["directory", "fifo", "symlink_loop", "dev_zero", "non_utf8", "binary_garbage", "control_characters"],
)
def test_what_is_not_a_stage_file_is_refused_before_reading(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(StageFileError, match=message) as refused:
        read_stage_file(tmp_path / "stage.yaml")
    assert str(refused.value).startswith(f"{tmp_path / 'stage.yaml'}: ")


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/dev/stdin"], ids=["zero", "null", "stdin"])
def test_dev_files_are_refused_as_stage_files(path):
    with pytest.raises(StageFileError, match=rf"^{path}: is (a device|a named pipe|under /dev)"):
        read_stage_file(Path(path))


def test_a_stage_file_saved_on_windows_still_reads(tmp_path):
    """A UTF-8 byte order mark and CRLF line ends are text, not garbage."""
    data = b"\xef\xbb\xbf" + AZURE_STAGE_1.read_bytes().replace(b"\n", b"\r\n")
    assert read_stage_file(write(tmp_path, data)) == stage_config(AZURE_STAGE_1)


def test_a_path_with_a_nul_character_is_refused_by_the_reader():
    from mlcanary.components.user_files import UnusableFile, read_text

    with pytest.raises(UnusableFile, match=r"is not a path: it holds a NUL character"):
        read_text(Path("stage\0.yaml"), "stage file")


@pytest.mark.parametrize("key", ["file", "code", "model"])
def test_a_config_path_with_a_nul_character_is_refused(key):
    config = renamed_deployment(LOCAL_STAGE_1, "blue")
    config["mlcanary:endpoint"]["deployments"]["blue"][key] = "a\0b"
    assert rf"'a\x00b' is not a path: it holds a NUL character" in spec_problems(config)


def test_config_keys_must_be_strings(tmp_path):
    assert stage_error(tmp_path, "config:\n  1: 2\n").endswith(
        "config keys are strings such as mlcanary:endpoint, got 1"
    )


def test_a_number_too_long_to_read_is_refused(tmp_path):
    text = local_stage_text().replace("instanceCount: 1", "instanceCount: 1" + "0" * 5000)
    message = stage_error(tmp_path, text)
    assert re.search(r"stage\.yaml: not valid YAML at line \d+, column \d+: cannot read '10+'… \(5001 characters\) "
                     r"as an integer$", message), message


def test_a_value_its_explicit_tag_cannot_read_is_refused(tmp_path):
    text = local_stage_text().replace("    traffic:", "    description: !!timestamp soon\n    traffic:")
    assert re.search(r"not valid YAML at line \d+, column 18: cannot read 'soon' as a date$", stage_error(tmp_path, text))


def test_an_impossible_date_is_refused(tmp_path):
    text = local_stage_text().replace("    traffic:", "    description: 2024-13-45\n    traffic:")
    assert re.search(r"not valid YAML at line \d+, column 18: cannot read '2024-13-45' as a date$", stage_error(tmp_path, text))


@pytest.mark.parametrize(
    "target, message",
    [
        ("/dev/zero", r"/dev/zero: is a device, not a regular file"),
        ("missing.yml", r"missing\.yml: deployment YAML file not found"),
        ("loop.yml", r"loop\.yml: is a symlink loop"),
        ("folder", r"folder: is a directory, not a deployment YAML file"),
    ],
    ids=["dev_zero", "missing", "symlink_loop", "directory"],
)
def test_a_file_deployment_that_is_not_a_file_is_refused(tmp_path, target, message):
    os.symlink("loop.yml", tmp_path / "loop.yml")
    (tmp_path / "folder").mkdir()
    config = stage_config(AZURE_STAGE_1)
    config["mlcanary:endpoint"]["deployments"]["blue"] = {"file": target}
    with pytest.raises(SpecError, match=rf"{E}\.deployments\.blue\.file: .*{message}"):
        load_stack_config(namespaced(config, "mlcanary"), tmp_path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: "/dev/zero", r"/dev/zero: is a device, not a regular file; a conda file is a regular file"),
        (lambda d: (d / "conda").mkdir() or "conda", r"conda: is a directory, not a conda file"),
        (lambda d: (d / "conda.yml").write_bytes(b"name: caf\xe9\n") and "conda.yml", r"conda\.yml: is not UTF-8 text"),
        (lambda d: (d / "conda.yml").write_text("#" * (2 * 1024 * 1024)) and "conda.yml",
         r"conda\.yml: 2 MiB is too large: a conda file is a few KB \(the limit is 1 MiB\)"),
    ],
    ids=["dev_zero", "directory", "non_utf8", "too_large"],
)
def test_a_conda_file_that_cannot_be_read_is_refused(tmp_path, make, message):
    """Its text goes to Azure: `condaFile: /dev/zero` used to fill memory while rendering."""
    config = stage_config(AZURE_STAGE_1)
    config["mlcanary:endpoint"]["deployments"]["blue"]["environment"] = {"image": "img", "condaFile": make(tmp_path)}
    with pytest.raises(SpecError, match=rf"{E}\.deployments\.blue\.environment\.condaFile: .*{message}"):
        load_stack_config(namespaced(config, "mlcanary"), tmp_path)


def test_a_local_code_path_that_is_a_symlink_loop_is_refused(tmp_path):
    os.symlink("code", tmp_path / "code")
    config = renamed_deployment(LOCAL_STAGE_1, "blue")
    config["mlcanary:endpoint"]["deployments"]["blue"]["code"] = "code"
    with pytest.raises(SpecError, match=rf"{E}\.deployments\.blue\.code: local path 'code' is a symlink loop"):
        load_stack_config(namespaced(config, "mlcanary"), tmp_path)


# --- only ASCII digits are numbers ---------------------------------------------------------------

FULL_WIDTH_100, FULL_WIDTH_2 = "\uff11\uff10\uff10", "\uff12"


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda e: e.update(traffic={"blue": FULL_WIDTH_100}), "traffic.blue"),
        (lambda e: e["deployments"]["blue"].update(instanceCount=FULL_WIDTH_2), "deployments.blue.instanceCount"),
        (lambda e: e["deployments"]["blue"].update(requestSettings={"requestTimeoutMs": "\uff15\uff10\uff10\uff10"}),
         "deployments.blue.requestSettings.requestTimeoutMs"),
        (lambda e: e["deployments"]["blue"].update(livenessProbe={"period": FULL_WIDTH_2}),
         "deployments.blue.livenessProbe.period"),
        (lambda e: e["deployments"]["blue"].update(readinessProbe={"failureThreshold": "\u0663"}),
         "deployments.blue.readinessProbe.failureThreshold"),
        (lambda e: e.update(mirrorTraffic={"blue": "\u00b2"}), "mirrorTraffic.blue"),
    ],
    ids=["traffic", "instance_count", "request_timeout", "probe_period", "arabic_indic_digit", "superscript_two"],
)
def test_only_ascii_digits_are_numbers(change, field):
    config = stage_config(AZURE_STAGE_1)
    change(config["mlcanary:endpoint"])
    assert re.search(rf"{E}\.{re.escape(field)}: must be a whole number, got '", spec_problems(config))


@pytest.mark.parametrize("quoted", ["2", "02", " 2"], ids=["plain", "leading_zero", "leading_space"])
def test_a_quoted_number_is_refused_where_a_number_is_asked_for(quoted):
    config = stage_config(AZURE_STAGE_1)
    config["mlcanary:endpoint"]["deployments"]["blue"]["instanceCount"] = quoted
    assert re.search(rf"{E}\.deployments\.blue\.instanceCount: must be a whole number, got '{quoted}'", spec_problems(config))


@pytest.mark.parametrize("written, reads_as", [
    ("010", "octal"), ("0x2", "hexadecimal"), ("0b10", "binary"), ("1_000", "underscores"),
    ("1:30", "base 60"), ("1_0.5", "underscores"),
], ids=["octal", "hex", "binary", "underscores", "sexagesimal", "float_underscores"])
def test_yaml_1_1_number_forms_are_refused_with_their_line(tmp_path, written, reads_as):
    text = local_stage_text().replace("instanceCount: 1", f"instanceCount: {written}", 1)
    assert f"instanceCount: {written}" in text
    message = stage_error(tmp_path, text)
    assert re.search(rf"{re.escape(written)!s} at line \d+ is not a plain number", message), message
    assert reads_as in message and "write it in decimal digits" in message


def test_plain_numbers_and_quoted_text_that_looks_like_a_number_still_read(tmp_path):
    from mlcanary.components.safe_yaml import load_yaml

    assert load_yaml("a: 10\nb: -3\nc: 0\nd: 2.5\ne: '010'\nf: +4\n", "t") == {
        "a": 10, "b": -3, "c": 0, "d": 2.5, "e": "010", "f": 4}


@pytest.mark.parametrize(
    "args",
    [["rehearse", str(LOCAL_STAGE_1), "--requests", FULL_WIDTH_100], ["logs", "fraud-scorer", "--deployment", "blue", "--lines", "\u0665"]],
    ids=["rehearse_requests", "logs_lines"],
)
def test_command_line_numbers_take_ascii_digits_only(state, args):
    result = CliRunner().invoke(main, [*args, "--state-dir", str(state)])
    assert result.exit_code == 2, result.output
    assert "is not a whole number (ASCII digits 0-9)" in result.output
    assert not (state / "runtime.json").exists()


@pytest.mark.parametrize("text", ["PT\uff11\uff10S", "P\uff11D", "PT1\u0660S"], ids=["full_width", "days", "arabic_indic"])
def test_durations_take_ascii_digits_only(text):
    assert parse_iso_seconds(text) is None


# --- echoed values are cut short -----------------------------------------------------------------

def test_shown_cuts_a_long_value_and_says_how_long_it_was():
    text = rules.shown("x" * 100_000)
    assert text == "'" + "x" * 60 + "'… (100000 characters)"
    assert rules.shown("blue\n") == r"'blue\n'"


def test_shown_bounds_containers():
    assert len(rules.shown({f"key{i}": "v" * 1000 for i in range(1000)})) < 200
    assert len(rules.shown([[[[[[["deep"]]]]]]] * 1000)) < 200


LONG = "b" * 100_000


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(name=LONG),
        lambda e: e.update(deployments={LONG: e["deployments"]["blue"]}, traffic={LONG: 100}),
        lambda e: e.update(authMode=LONG),
        lambda e: e.update(traffic={"blue": LONG}),
        lambda e: e["deployments"]["blue"].update(model=f"azureml:{LONG}"),
        lambda e: e["deployments"]["blue"].update(environment=LONG),
        lambda e: e["deployments"]["blue"].update(code=LONG, model=None, environment=None),
        lambda e: e["deployments"]["blue"].update(type=LONG),
        lambda e: e.update(tags={"team": [LONG]}),
        lambda e: e.update(traffic={"nope": 100, "blue": 0}, deployments={**e["deployments"], "c" * 50_000: {}}),
    ],
    ids=["endpoint_name", "deployment_name", "auth_mode", "traffic_value", "model", "environment", "local_path",
         "deployment_type", "tag_value", "known_deployments_list"],
)
def test_a_100_kb_value_is_not_echoed_in_full(change):
    config = stage_config(AZURE_STAGE_1)
    change(config["mlcanary:endpoint"])
    message = spec_problems(config)
    assert len(message) < 3000, message[:3000]
    assert "characters)" in message


def every_key() -> list[tuple[str, str]]:
    """Every key a stage may set on the endpoint or a deployment, from the spec's own models."""
    from mlcanary.components.spec import DeploymentSpec, EndpointSpec

    keys = [("endpoint", f.alias) for f in EndpointSpec.model_fields.values()]
    return keys + [("deployment", f.alias) for f in DeploymentSpec.model_fields.values()] + [("deployment", "file")]


@pytest.mark.parametrize("stage", [AZURE_STAGE_1, LOCAL_STAGE_1], ids=["azure", "local"])
@pytest.mark.parametrize("value", [LONG, [LONG], {LONG: LONG}, {"a": {"b": LONG}}], ids=["string", "list", "mapping", "nested"])
@pytest.mark.parametrize("where, key", every_key(), ids=[f"{w}.{k}" for w, k in every_key()])
def test_no_key_echoes_a_100_kb_value_in_full(stage, value, where, key):
    config = renamed_deployment(stage, "blue")
    endpoint = config["mlcanary:endpoint"]
    (endpoint if where == "endpoint" else endpoint["deployments"]["blue"])[key] = copy.deepcopy(value)
    try:
        load_stack_config(namespaced(config, "mlcanary"), PROJECT_DIR)
    except SpecError as err:
        assert len(str(err)) < 4000, str(err)[:4000]


def test_check_output_with_a_100_kb_name_stays_short(tmp_path):
    stage = write(tmp_path, AZURE_STAGE_1.read_text().replace("name: fraud-scorer", f"name: {LONG}"))
    result = CliRunner().invoke(main, ["check", str(stage)])
    assert result.exit_code == 2
    assert len(result.output) < 1000 and "(100000 characters)" in result.output


@pytest.mark.parametrize(
    "text",
    ['{"%s": "advisory"}' % LONG, '{"all": "%s"}' % LONG, '{"instance-count-in-range": {"minInstanceCount": "%s"}}' % LONG,
     '{"instance-count-in-range": {"%s": 1}}' % LONG, '{"instance-count-in-range": ["%s"]}' % LONG],
    ids=["policy_name", "level", "knob_value", "knob_name", "entry"],
)
def test_a_long_policy_config_value_is_not_echoed_in_full(tmp_path, text):
    config = tmp_path / "policy.json"
    config.write_text(text)
    result = CliRunner().invoke(main, ["check", "--policy-pack-config", str(config), str(AZURE_STAGE_1)])
    assert result.exit_code == 2
    assert len(result.output) < 1000 and "characters)" in result.output


# --- every unusable input: exit 2, one short message, no traceback ---------------------------------

def bad_input(tmp_path: Path, case: str) -> Path:
    """A stage file (or what stands in its place) for each kind of unusable input."""
    local = local_stage_text()
    if case == "directory":
        (tmp_path / "stage.yaml").mkdir()
        return tmp_path / "stage.yaml"
    if case == "missing":
        return tmp_path / "nope.yaml"
    if case == "symlink_loop":
        os.symlink("stage.yaml", tmp_path / "stage.yaml")
        return tmp_path / "stage.yaml"
    if case == "fifo":
        os.mkfifo(tmp_path / "stage.yaml")
        return tmp_path / "stage.yaml"
    if case == "dev_zero":
        return Path("/dev/zero")
    if case == "binary_garbage":
        return write(tmp_path, bytes((i * 37 + 11) % 256 for i in range(4096)))
    if case == "non_utf8":
        return write(tmp_path, local.encode() + b"# caf\xe9\n")
    if case == "duplicate_keys":
        return write(tmp_path, local.replace("    traffic: {blue: 100}", "    traffic: {blue: 100}\n    traffic: {blue: 0}"))
    if case == "alias_bomb":
        return write(tmp_path, alias_bomb())
    if case == "deep_nesting":
        return write(tmp_path, "config:\n  mlcanary:endpoint: {tags: " + "[" * 3000 + "]" * 3000 + "}\n")
    if case == "too_large":
        return write(tmp_path, local + "#" * (2 * 1024 * 1024) + "\n")
    if case == "config_key_not_a_string":
        return write(tmp_path, "config:\n  1: 2\n")
    if case == "file_missing":
        return write(tmp_path, local.replace("        model: ", "        file: missing.yml\n        model: "))
    if case == "file_dev_zero":
        return write(tmp_path, local.replace("        model: ", "        file: /dev/zero\n        model: "))
    if case == "file_symlink_loop":
        os.symlink("loop.yml", tmp_path / "loop.yml")
        return write(tmp_path, local.replace("        model: ", "        file: loop.yml\n        model: "))
    if case == "newline_name":
        return write(tmp_path, local.replace("      blue:\n", '      "blue\\n":\n').replace("{blue: 100}", '{"blue\\n": 100}'))
    if case == "full_width_traffic":
        return write(tmp_path, local.replace("{blue: 100}", '{blue: "\uff11\uff10\uff10"}'))
    raise AssertionError(case)


BAD_INPUTS = {
    "directory": r"stage\.yaml: is a directory, not a stage file",
    "missing": r"nope\.yaml: stage file not found",
    "symlink_loop": r"stage\.yaml: is a symlink loop",
    "fifo": r"stage\.yaml: is a named pipe \(FIFO\), not a regular file",
    "dev_zero": r"/dev/zero: is a device, not a regular file",
    "binary_garbage": r"stage\.yaml: is binary data, not a text stage file",
    "non_utf8": r"stage\.yaml: is not UTF-8 text \(byte 0xe9 at offset \d+\)",
    "duplicate_keys": r"stage\.yaml: duplicate key 'traffic' at line \d+, column 5 \(first at line \d+, column 5\)",
    "alias_bomb": r"stage\.yaml: more than 10000 values once YAML aliases are expanded",
    "deep_nesting": r"stage\.yaml: nested deeper than 50 levels",
    "too_large": r"stage\.yaml: 2\.0 MiB is too large: a stage file is a few KB \(the limit is 1 MiB\)",
    "config_key_not_a_string": r"stage\.yaml: config keys are strings such as mlcanary:endpoint, got 1",
    "file_missing": r"deployments\.blue\.file: .*missing\.yml: deployment YAML file not found",
    "file_dev_zero": r"deployments\.blue\.file: /dev/zero: is a device, not a regular file",
    "file_symlink_loop": r"deployments\.blue\.file: .*loop\.yml: is a symlink loop",
    "newline_name": r"'blue\\n' is not a valid deployment name",
    "full_width_traffic": r"traffic\.blue: must be a whole number, got '\uff11\uff10\uff10'",
}
COMMANDS = {
    "check": lambda path, state: ["check", str(path)],
    "local_up": lambda path, state: ["local", "up", str(path), "--state-dir", str(state)],
    "rehearse": lambda path, state: ["rehearse", str(path), "--state-dir", str(state)],
}


@pytest.fixture
def state(tmp_path):
    """A state directory for local commands; a runtime a regression starts there is stopped."""
    from mlcanary.local_runtime.client import RuntimeClient
    from test_local_runtime import stop_runtime

    yield tmp_path / "state"
    if (tmp_path / "state" / "runtime.json").exists():
        stop_runtime(RuntimeClient(tmp_path / "state"))


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_an_unusable_stage_exits_2_with_one_short_message(tmp_path, state, case, command):
    result = CliRunner().invoke(main, COMMANDS[command](bad_input(tmp_path, case), state))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(BAD_INPUTS[case], result.output), result.output
    assert len(result.output) < 1000, result.output
    assert not (state / "runtime.json").exists()  # nothing was started


@pytest.mark.parametrize("command", ["local_up", "rehearse"])
def test_a_stage_of_the_azure_target_is_unusable_locally(state, command):
    result = CliRunner().invoke(main, COMMANDS[command](AZURE_STAGE_1, state))
    assert result.exit_code == 2, result.output
    assert f"error: {AZURE_STAGE_1}: this stage targets 'azure'; the local target applies local-target stages " \
           "(mlcanary:target: local)" in result.output
    assert not (state / "runtime.json").exists()  # refused before a runtime was started


def test_an_unreadable_request_file_for_rehearse_exits_2(state):
    result = CliRunner().invoke(
        main, ["rehearse", str(LOCAL_STAGE_1), "--request-file", "/dev/zero", "--state-dir", str(state)])
    assert result.exit_code == 2, result.output
    assert "error: /dev/zero: is a device, not a regular file" in result.output
    assert not (state / "runtime.json").exists()


def state_dir_case(folder: Path, case: str) -> Path:
    if case == "symlink_loop":
        os.symlink("state", folder / "state")
        return folder / "state"
    (folder / "state").write_text("a file")
    return folder / "state" / "sub" if case == "under_a_file" else folder / "state"


@pytest.mark.parametrize(
    "case, message",
    [("a_file", r"state: is not a directory"), ("under_a_file", r"state/sub: .*state is not a directory"),
     ("symlink_loop", r"state: is a symlink loop")],
    ids=["a_file", "under_a_file", "symlink_loop"],
)
@pytest.mark.parametrize("command", ["local_up", "rehearse"])
def test_an_unusable_state_dir_exits_2(tmp_path, case, message, command):
    state = state_dir_case(tmp_path, case)
    assert state.is_relative_to(tmp_path)
    result = CliRunner().invoke(main, COMMANDS[command](LOCAL_STAGE_1, state))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert re.search(rf"^error: --state-dir .*{message}", result.output, flags=re.M), result.output


POLICY_CONFIGS = {
    "directory": (lambda d: (d / "policy.json").mkdir(), r"policy\.json: is a directory, not a policy config file"),
    "dev_zero": (lambda d: os.symlink("/dev/zero", d / "policy.json"), r"policy\.json: is a device, not a regular file"),
    "fifo": (lambda d: os.mkfifo(d / "policy.json"), r"policy\.json: is a named pipe \(FIFO\)"),
    "non_utf8": (lambda d: (d / "policy.json").write_bytes(b'{"all": "advis\xe9ory"}'), r"policy\.json: is not UTF-8 text"),
    "deep_nesting": (lambda d: (d / "policy.json").write_text('{"all": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                     r"policy\.json: nested deeper than 50 levels"),
    "duplicate_keys": (lambda d: (d / "policy.json").write_text('{"all": "advisory",\n "all": "disabled"}'),
                       r"policy\.json: duplicate key 'all'; a key may appear once in an object"),
    "too_large": (lambda d: (d / "policy.json").write_text("{}" + " " * (2 * 1024 * 1024)),
                  r"policy\.json: 2\.0 MiB is too large: a policy config is a few KB \(the limit is 1 MiB\)"),
}


@pytest.mark.parametrize("case", list(POLICY_CONFIGS))
def test_an_unusable_policy_config_exits_2(tmp_path, case):
    make, message = POLICY_CONFIGS[case]
    make(tmp_path)
    result = CliRunner().invoke(main, ["check", "--policy-pack-config", str(tmp_path / "policy.json"), str(AZURE_STAGE_1)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert re.search(rf"^error: .*{message}", result.output, flags=re.M), result.output


def test_the_installed_command_prints_no_traceback_for_unusable_stages(tmp_path):
    """The real entry point in a fresh process: what a pipeline log shows."""
    paths = [bad_input(tmp_path / case, case) for case in BAD_INPUTS if not (tmp_path / case).mkdir()]
    done = subprocess.run(
        [sys.executable, "-m", "mlcanary.cli", "check", *map(str, paths)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.count("error: ") == len(BAD_INPUTS)


# --- probe and request settings have upper bounds, checked by `check` too (issue 15) ---------------

@pytest.mark.parametrize("key, settings, message", [
    ("readinessProbe", {"period": 10**9, "failureThreshold": 10**9},
     "readinessProbe.period: period must be a whole number from 1 to 3600, got 1000000000"),
    ("readinessProbe", {"failureThreshold": 10**9}, "readinessProbe.failureThreshold: failureThreshold must be a whole "
     "number from 1 to 1000, got 1000000000"),
    ("livenessProbe", {"initialDelay": 10**6}, "livenessProbe.initialDelay: initialDelay must be a whole number from 0 "
     "to 3600, got 1000000"),
    ("requestSettings", {"maxConcurrentRequestsPerInstance": 0}, "requestSettings.maxConcurrentRequestsPerInstance: "
     "maxConcurrentRequestsPerInstance must be a whole number from 1 to 1000, got 0"),
    ("requestSettings", {"maxQueueWaitMs": 10**9}, "requestSettings.maxQueueWaitMs: maxQueueWaitMs must be a whole "
     "number from 1 to 180000, got 1000000000"),
], ids=["huge_period", "huge_failure_threshold", "huge_initial_delay", "no_concurrency", "huge_queue_wait"])
def test_probe_and_request_settings_past_their_bounds_are_refused(key, settings, message):
    config = stage_config(AZURE_STAGE_1)
    config["mlcanary:endpoint"]["deployments"]["blue"][key] = settings
    assert f"{E}.deployments.blue.{message}" in spec_problems(config)


def test_check_refuses_a_huge_readiness_probe_without_a_traceback(tmp_path):
    text = local_stage_text().replace("        instanceCount: 1\n",
                                      "        instanceCount: 1\n        readinessProbe: {period: 1000000000, failureThreshold: 1000000000}\n", 1)
    assert "readinessProbe" in text
    result = CliRunner().invoke(main, ["check", str(write(tmp_path, text))])
    assert result.exit_code == 2, result.output
    assert "readinessProbe.period: period must be a whole number from 1 to 3600, got 1000000000" in result.output
    assert "Traceback" not in result.output and "OverflowError" not in result.output
