"""`mlcanary invoke`: score a request on a local endpoint."""

from __future__ import annotations

from pathlib import Path

import click

from mlcanary.cli_support import (
    echo_json, fail, no_such_endpoint, request_body, require_running, runtime_client, runtime_errors,
    state_dir_option,
)


@click.command()
@click.argument("endpoint")
@click.option("--request-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="JSON request body, e.g. samples/request.json.")
@click.option("--deployment", help="Send to this deployment (the azureml-model-deployment header), whatever its traffic.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: the answer's body on stdout, the answering deployment, status and latency on stderr; "
              "json: {status, deployment, latencyMs, body} on stdout.")
@state_dir_option
def invoke(endpoint: str, request_file: Path, deployment: str | None, output_format: str,
           state_dir: Path | None) -> None:
    """Score a request on a local ENDPOINT and print the response, like `az ml online-endpoint invoke`.

    Shows which deployment answered (the azureml-model-deployment header of the answer).
    """
    import time

    import requests

    from mlcanary.local_runtime.protocol import PIN_HEADER

    body = request_body(request_file)
    client = runtime_client(state_dir)
    require_running(client)
    try:
        status = client.status()
        if endpoint not in status["endpoints"]:
            fail(no_such_endpoint(endpoint, status))
        key = client.keys(endpoint)["primaryKey"]
    except runtime_errors() as err:
        fail(str(err))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if deployment:
        headers[PIN_HEADER] = deployment
    started = time.perf_counter()
    try:
        answer = requests.post(status["endpoints"][endpoint]["scoringUri"], data=body,
                               headers=headers, timeout=300)
    except requests.RequestException as err:
        from mlcanary.components.rules import shown

        fail(f"no answer from endpoint {shown(endpoint)} ({type(err).__name__}): is the local runtime still running? "
              "See `mlcanary local status`")
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    answered_by = answer.headers.get(PIN_HEADER)
    if output_format == "json":
        try:
            answer_body = answer.json()
        except ValueError:
            answer_body = answer.text
        echo_json({"status": answer.status_code, "deployment": answered_by, "latencyMs": latency_ms,
                    "body": answer_body})
    else:
        click.echo(answer.text)
        click.echo(f"answered by: {answered_by or '(no deployment)'}, HTTP {answer.status_code}, {latency_ms} ms",
                   err=True)
    if answer.status_code != 200:
        fail(f"HTTP {answer.status_code} from {answered_by or endpoint}")

