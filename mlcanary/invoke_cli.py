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
    import http.client
    import json
    import time
    from urllib.parse import urlsplit

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
    # The standard library's client: requests would cost every invoke about 0.1 s of imports.
    scoring = urlsplit(status["endpoints"][endpoint]["scoringUri"])  # the local router: http://127.0.0.1:PORT/score
    connection = http.client.HTTPConnection(scoring.hostname, scoring.port, timeout=300)
    started = time.perf_counter()
    try:
        connection.request("POST", scoring.path or "/", body=body, headers=headers)
        answer = connection.getresponse()
        text = answer.read().decode("utf-8", errors="replace")
    except (OSError, http.client.HTTPException) as err:
        from mlcanary.components.rules import shown

        fail(f"no answer from endpoint {shown(endpoint)} ({type(err).__name__}): is the local runtime still running? "
             "See `mlcanary local status`")
    finally:
        connection.close()
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    answered_by = answer.getheader(PIN_HEADER)
    if output_format == "json":
        try:
            answer_body = json.loads(text)
        except ValueError:
            answer_body = text
        echo_json({"status": answer.status, "deployment": answered_by, "latencyMs": latency_ms, "body": answer_body})
    else:
        click.echo(text)
        click.echo(f"answered by: {answered_by or '(no deployment)'}, HTTP {answer.status}, {latency_ms} ms", err=True)
    if answer.status != 200:
        fail(f"HTTP {answer.status} from {answered_by or endpoint}")

