"""A stand-in for the workspace's blob container as azure-storage-blob's ContainerClient shows it, with
Azure ML's data collector writing into it. The rules a naive reader breaks, and where they come from:

- `list_blobs(name_starts_with=prefix)` yields BlobProperties (`.name`, `.size`) of every blob whose
  name starts with the prefix, in lexicographic order (Blob service REST "List Blobs": "Blobs are listed
  in alphabetical order in the response body"); a name is the path inside the container, no leading '/'.
- `download_blob(name, offset, length)`: a missing blob raises ResourceNotFoundError (BlobNotFound);
  a range starting at or past the end raises HttpResponseError 416 InvalidRange (REST "Get Blob" with
  `x-ms-range`); a length without an offset is refused by azure-storage-blob itself ("Offset value must
  not be None if length is set.", `_blob_client_helpers.py`). It returns a downloader with `readall()`.
- The data collector's layout and format (Microsoft's "Collect production data from models deployed for
  real-time inferencing", "Store collected data in Blob Storage"): `modelDataCollector/<endpoint>/
  <deployment>/<collection>/<yyyy>/<MM>/<dd>/<HH>/<instance_id>.jsonl`, one JSON record per line with
  `specversion`, `id`, `source`, `type` (`azureml.inference.response`), `datacontenttype`, `time`
  (`2022-05-25T08:59:48Z`), `data` (the answer), `correlationid`, `xrequestid`, `contentrange`.
- The collector appends to an instance's file as requests come: a reader can catch a line half-written.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError


@dataclass(frozen=True)
class BlobProperties:
    name: str
    size: int


class _Downloader:
    def __init__(self, data: bytes):
        self.data = data

    def readall(self) -> bytes:
        return self.data


class FakeContainer:
    def __init__(self):
        self.blobs: dict[str, bytearray] = {}
        self.lock = threading.Lock()
        self.downloads = 0

    # --- what the reader calls (azure-storage-blob's ContainerClient) ---

    def list_blobs(self, name_starts_with: str | None = None, **kwargs):
        with self.lock:
            return [BlobProperties(n, len(b)) for n, b in sorted(self.blobs.items())
                    if n.startswith(name_starts_with or "")]

    def download_blob(self, blob: str, offset: int | None = None, length: int | None = None, **kwargs):
        if length is not None and offset is None:
            raise ValueError("Offset value must not be None if length is set.")
        with self.lock:
            if blob not in self.blobs:
                raise ResourceNotFoundError("The specified blob does not exist. ErrorCode:BlobNotFound")
            data = bytes(self.blobs[blob])
        self.downloads += 1
        start = offset or 0
        if offset is not None and start >= len(data):
            error = HttpResponseError("The range specified is invalid for the current size of the resource. "
                                      "ErrorCode:InvalidRange")
            error.status_code = 416
            raise error
        return _Downloader(data[start:] if length is None else data[start:start + length])

    # --- what the data collector does ---

    def append(self, name: str, data: bytes) -> None:
        with self.lock:
            self.blobs.setdefault(name, bytearray()).extend(data)


def collector_file(endpoint: str, deployment: str, collection: str, moment: datetime, instance: str) -> str:
    return f"modelDataCollector/{endpoint}/{deployment}/{collection}/{moment:%Y/%m/%d/%H}/{instance}.jsonl"


def response_record(endpoint: str, deployment: str, answer, correlation: str | None = None,
                    moment: datetime | None = None) -> bytes:
    """One line as the collector writes it for payload logging of a response (Microsoft's example)."""
    moment = moment or datetime.now(UTC)
    body = json.dumps(answer)
    record = {"specversion": "1.0", "id": str(uuid.uuid4()),
              "source": f"/subscriptions/sub-1/resourceGroups/ml-prod-rg/providers/Microsoft.MachineLearningServices/"
                        f"workspaces/ml-prod-ws/onlineEndpoints/{endpoint}/deployments/{deployment}",
              "type": "azureml.inference.response", "datacontenttype": "application/json",
              "time": moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "data": answer,
              "contentrange": f"bytes 0-{len(body) - 1}/{len(body)}"}
    if correlation:
        record |= {"correlationid": correlation, "xrequestid": correlation}
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()
