"""The answer judge's windows on Azure: what Azure ML's data collector wrote of both deployments' answers.

Azure discards a mirror's answers; a deployment with a data collector logs them (payload logging:
the `response` collection; custom logging from the scoring script: `model_outputs`) to the workspace's
blob store, one JSON record per line (Microsoft's "Collect production data from models deployed for
real-time inferencing", "Store collected data in Blob Storage"):

    <collection folder>/<yyyy>/<MM>/<dd>/<HH>/<instance_id>.jsonl
    {"specversion": "1.0", "id": ..., "source": ..., "type": "azureml.inference.response",
     "datacontenttype": "application/json", "time": "2022-05-25T08:59:48Z", "data": <the answer>,
     "correlationid": ..., "xrequestid": ..., "contentrange": ...}

The collection folder is `azureml://datastores/workspaceblobstore/paths/modelDataCollector/<endpoint>/
<deployment>/<collection>`, or the collection's `data.path`. A payload above 4 MB, or a binary one, is
stored apart (`datainblob`): not compared. The files are read through azure-ai-ml's datastore access
(`get_datastore_info`: a SAS the datastore issues, or the user's identity for an identity-based
datastore) with azure-storage-blob's ContainerClient: `list_blobs(name_starts_with=<day folder>)`, then
`download_blob(name, offset, length)` of what each file gained since the last reading.

Each reading folds in the records newer than the rollout's start: each answer's number at the compare
path joins its side's outputs (the distributions), and a target answer whose correlation id the
baseline also logged (a mirrored copy logged under the request's id) is compared with it as a pair.
Records land late (Microsoft documents no figure for this collector; its predecessor's data took up to
10 minutes, LANDING_DELAY): until both sides have landed answers, and while the target's newest answer is
older than that delay, the window says `pending` and the step holds. A line still being written (no
newline yet) waits for the next reading; a line that is not a record is counted and ignored.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from mlcanary.components.answer_compare import compare, output_value, request_hash
from mlcanary.components.spec import DeploymentSpec
from mlcanary.rollout.answer_judge import AnswerOptions, AnswerWindow
from mlcanary.rollout.sources import SourceError

LANDING_DELAY = timedelta(minutes=10)
DEFAULT_DATASTORE = "workspaceblobstore"
DEFAULT_FOLDER = "modelDataCollector"
ANSWER_COLLECTIONS = ("response", "model_outputs")  # payload logging first, then custom logging
MAX_WAITING = 20_000  # answers kept waiting for their partner (bounded memory)
MAX_SAMPLES = 20
NOTES_PER_FILE = 3  # malformed lines described per file and reading; the rest are counted
DATASTORE_PATH = re.compile(r"^azureml://(?:subscriptions/[^/]+/resource[gG]roups/[^/]+/workspaces/[^/]+/)?"
                            r"datastores/(?P<datastore>[^/]+)/paths/(?P<path>.*?)/*$")


class Container(Protocol):
    """What this module calls of azure-storage-blob's ContainerClient."""

    def list_blobs(self, name_starts_with: str | None = None) -> Iterable[Any]: ...  # BlobProperties: .name, .size

    def download_blob(self, blob: str, offset: int | None = None, length: int | None = None) -> Any: ...  # .readall()


@dataclass(frozen=True)
class Collection:
    """Where one deployment's answers land: a datastore and the collection's folder in it."""

    deployment: str
    name: str
    datastore: str
    folder: str

    def __str__(self) -> str:
        return f"azureml://datastores/{self.datastore}/paths/{self.folder}"


def answer_collection(endpoint: str, name: str, deployment: DeploymentSpec | None, field: str) -> Collection:
    """The collection holding `name`'s answers, or a SourceError naming the config field to set."""
    collector = deployment.data_collector if deployment else None
    enabled = {n: c for n, c in (collector.collections.items() if collector else ()) if c.enabled}
    chosen = next((n for n in ANSWER_COLLECTIONS if n in enabled), None)
    if chosen is None:
        raise SourceError(f"{field}.dataCollector: --compare-path on Azure reads {name}'s answers from Azure ML's "
                          "data collector; enable collections.response (payload logging) or collections.model_outputs "
                          "(custom logging from the scoring script) on both deployments")
    data = enabled[chosen].data
    if data is not None and data.path:
        match = DATASTORE_PATH.match(data.path)
        if match is None:
            raise SourceError(f"{field}.dataCollector.collections.{chosen}.data.path: {data.path!r} is not a datastore "
                              "path: azureml://datastores/<datastore>/paths/<path>")
        return Collection(name, chosen, match["datastore"], match["path"])
    return Collection(name, chosen, DEFAULT_DATASTORE, f"{DEFAULT_FOLDER}/{endpoint}/{name}/{chosen}")


def datastore_containers(workspace: tuple[str, str, str], datastores: set[str]) -> dict[str, Container]:
    """A ContainerClient per datastore, with the credential azure-ai-ml's datastore access gives."""
    from azure.ai.ml import MLClient
    from azure.ai.ml._artifacts._artifact_utilities import get_datastore_info
    from azure.storage.blob import ContainerClient

    from mlcanary.components.arm import azure_credential

    client = MLClient(azure_credential(), *workspace)
    containers = {}
    for name in sorted(datastores):
        try:
            info = get_datastore_info(client.datastores, name)
        except Exception as err:  # azure-core's HttpResponseError, ClientAuthenticationError, MlException ...
            raise SourceError(f"cannot open datastore {name} of workspace {workspace[2]}: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from None
        containers[name] = ContainerClient(info["account_url"], info["container_name"], credential=info["credential"])
    return containers


@dataclass
class _Answer:
    side: str
    time: datetime
    body: bytes


class CollectorAnswerSource:
    """Reads both deployments' collected answers; `read()` returns what landed since the last reading."""

    def __init__(self, containers: dict[str, Container], target: Collection, baseline: Collection,
                 options: AnswerOptions, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_note: Callable[[str], None] = lambda text: None, landing_delay: timedelta | None = None):
        self.containers, self.options, self.clock, self.on_note = containers, options, clock, on_note
        self.sides = {"target": target, "baseline": baseline}
        self.landing_delay = landing_delay or LANDING_DELAY
        self.started = clock()
        self.offsets: dict[tuple[str, str], int] = {}  # (datastore, blob) -> bytes consumed
        self.sizes: dict[tuple[str, str], int] = {}  # size at the previous reading
        self.newest: dict[str, datetime] = {}  # side -> time of its newest answer read
        self.waiting: OrderedDict[str, _Answer] = OrderedDict()  # correlation id -> an answer awaiting its partner
        self.malformed = 0

    def start(self) -> None:
        self.started = self.clock()

    def stop(self) -> None:
        pass

    def describe(self) -> list[str]:
        return [f"answers of {c.deployment}: data collector collection {c.name} at {c}/<yyyy>/<MM>/<dd>/<HH>/*.jsonl "
                f"(lands up to ~{self.landing_delay.total_seconds() / 60:g} min late: a step waits for it)"
                for c in self.sides.values()]

    def read(self) -> AnswerWindow:
        now = self.clock()
        answers: list[tuple[str | None, _Answer]] = []
        malformed_before = self.malformed
        failed = None
        for side, collection in self.sides.items():
            try:
                self._read_side(side, collection, now, answers)
            except SourceError as err:  # what was read before stays read: its files' offsets have moved on
                failed = failed or str(err)
        outputs: dict[str, list[float]] = {"target": [], "baseline": []}
        compared = agreed = unpaired = 0
        unpaired_now: set[str] = set()
        samples: list[dict] = []
        for correlation, answer in answers:
            value = output_value(200, answer.body, self.options.settings.path)
            if value is not None:
                outputs[answer.side].append(value)
            partner = self.waiting.get(correlation) if correlation else None
            if partner is not None and partner.side != answer.side:
                del self.waiting[correlation]
                if partner.side == "target" and correlation in unpaired_now:
                    unpaired_now.discard(correlation)
                    unpaired -= 1
                live, mirror = (partner, answer) if answer.side == "target" else (answer, partner)
                comparison = compare(200, live.body, 200, mirror.body, self.options.settings)
                if comparison.agreed is not None:
                    compared += 1
                    agreed += comparison.agreed
                    if not comparison.agreed and len(samples) < MAX_SAMPLES:
                        samples.append({"live": self.sides["baseline"].deployment,
                                        "mirror": self.sides["target"].deployment,
                                        "request": request_hash(correlation.encode()), "reason": comparison.reason[:300],
                                        "liveValue": comparison.live_value, "mirrorValue": comparison.mirror_value})
                continue
            if answer.side == "target":  # no partner (yet): its number still joins the distributions
                unpaired += 1
                if correlation:
                    unpaired_now.add(correlation)
            if correlation:
                self.waiting[correlation] = answer
                while len(self.waiting) > MAX_WAITING:
                    self.waiting.popitem(last=False)
        return AnswerWindow(compared, agreed, 0, tuple(outputs["target"]), tuple(outputs["baseline"]), tuple(samples),
                            pending=failed or self._pending(now), unpaired=unpaired,
                            malformed=self.malformed - malformed_before)

    def _pending(self, now: datetime) -> str | None:
        for side in ("target", "baseline"):
            collection = self.sides[side]
            newest = self.newest.get(side)
            if newest is None:
                return (f"no answers of {collection.deployment} collected since the rollout began have landed in {collection} "
                        f"yet (the data collector writes them up to ~{self.landing_delay.total_seconds() / 60:g} min late)")
            # The baseline may go quiet (no live traffic at 100 %); the target must keep landing answers.
            if side == "target" and now - newest > self.landing_delay and now - self.started > self.landing_delay:
                return (f"the newest collected answer of {collection.deployment} is from {newest:%H:%M:%S} UTC, more than "
                        f"{self.landing_delay.total_seconds() / 60:g} min ago: its answers since have not landed in "
                        f"{collection}")
        return None

    def _read_side(self, side: str, collection: Collection, now: datetime,
                   found: list[tuple[str | None, _Answer]]) -> None:
        container = self.containers[collection.datastore]
        day = self.started.date()
        while day <= now.date():
            prefix = f"{collection.folder}/{day:%Y/%m/%d}/"
            try:
                blobs = [(b.name, int(b.size)) for b in container.list_blobs(name_starts_with=prefix)]
            except Exception as err:  # azure-core's HttpResponseError, ClientAuthenticationError, ServiceRequestError
                raise SourceError(f"cannot list {collection}: {type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''}") from None
            for name, size in blobs:
                if name.endswith(".jsonl"):
                    found += self._read_blob(side, collection, container, name, size)
            day += timedelta(days=1)

    def _read_blob(self, side: str, collection: Collection, container: Container, name: str,
                   size: int) -> list[tuple[str | None, _Answer]]:
        key = (collection.datastore, name)
        offset, steady = self.offsets.get(key, 0), self.sizes.get(key) == size
        self.sizes[key] = size
        if size <= offset:
            return []
        try:
            text = container.download_blob(name, offset=offset, length=size - offset).readall()
        except Exception as err:
            raise SourceError(f"cannot read {name} in datastore {collection.datastore}: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from None
        lines = text.split(b"\n")
        tail = lines.pop()  # after the last newline: a record still being written, or the last one of a quiet file
        consumed = len(text) - len(tail)
        if tail.strip() and steady and _record(tail) is not None:
            lines.append(tail)  # the file kept its size since the last reading: its last line is whole
            consumed = len(text)
        self.offsets[key] = offset + consumed
        found, bad = [], 0
        for line in lines:
            if not line.strip():
                continue
            record = _record(line)
            if record is None:
                self.malformed, bad = self.malformed + 1, bad + 1
                if bad <= NOTES_PER_FILE:
                    self.on_note(f"data collector: a line of {name} (datastore {collection.datastore}) is not a "
                                 f"collected record ({_why_not(line)}): ignored")
                continue
            answer = self._answer(side, record)
            if answer is not None:
                found.append((record.get("correlationid") or None, answer))
        if bad > NOTES_PER_FILE:
            self.on_note(f"data collector: {bad - NOTES_PER_FILE} more lines of {name} are not collected records: ignored")
        return found

    def _answer(self, side: str, record: dict) -> _Answer | None:
        moment = _time(record.get("time"))
        if moment is None or moment < self.started - timedelta(seconds=1):
            return None  # before the rollout: other traffic
        self.newest[side] = max(self.newest.get(side, moment), moment)
        if str(record.get("datainblob", "")).lower() == "true":
            return None  # a large or binary payload stored apart: not compared
        data = record["data"]
        body = data.encode() if isinstance(data, str) and "json" not in str(record.get("datacontenttype", "")) \
            else json.dumps(data).encode()
        return _Answer(side, moment, body)


def _record(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(record, dict) or "data" not in record or _time(record.get("time")) is None:
        return None
    return record


def _why_not(line: bytes) -> str:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        return f"not JSON: {str(err)[:80]}"
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    return "no data" if "data" not in record else "no valid time"


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
