"""A Python client of the agent's API (Open Inference Protocol v2 over HTTP).

    from edgedl.client import AgentClient

    with AgentClient("http://127.0.0.1:8080") as agent:  # or "unix:///run/edgedl/agent.sock"
        agent.ready()                                 # True / False
        agent.metadata("digits")                      # inputs, outputs, versions
        outputs = agent.infer("digits", x)            # x: float array, batch first
        outputs["output_0"]                           # float32 array
        answer = agent.predict("digits", x)           # outputs with the prediction's id
        agent.label(answer.id, 7)                     # its true label, minutes or days later
        agent.labels([(id1, 3), (id2, [1, 4])])       # many at once (a list per batch request)

Tensors travel with the binary tensor data extension (no JSON number formatting either
way). Any 4xx/5xx answer raises :class:`~edgedl.errors.ServingError` with the agent's
message and ``status``; an agent that cannot be reached raises it with ``status`` 0. This
module needs only NumPy and httpx: it does not import the agent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from .datatypes import NUMPY_DTYPES, datatype_of
from .errors import ServingError, UsageError

Array = NDArray[Any]
UNIX_SCHEME = "unix://"  # unix:///run/edgedl/agent.sock: the agent's Unix domain socket


@dataclass(frozen=True)
class Prediction:
    """An infer answer with its id (to label later) and the version that answered."""

    id: str | None
    model_version: str | None
    outputs: dict[str, NDArray[Any]]


class AgentClient:
    """Talks to one running agent. Use as a context manager, or call :meth:`close`."""

    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 30.0) -> None:
        """``url``: ``http://host:port``, or ``unix:///path/to.sock`` for the agent's Unix socket."""
        self.url = url.rstrip("/")
        if self.url.startswith(UNIX_SCHEME):
            path = self.url[len(UNIX_SCHEME) :]
            if not path.startswith("/"):
                raise UsageError(f"a Unix socket URL needs an absolute path: {url!r}")
            transport = httpx.HTTPTransport(uds=path)
            self._http = httpx.Client(base_url="http://agent", transport=transport, timeout=timeout)
        else:
            self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._inputs: dict[tuple[str, str | None], list[dict[str, Any]]] = {}

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def live(self) -> bool:
        """True when the agent's process answers."""
        return self._status("/v2/health/live") == 200

    def ready(self) -> bool:
        """True when the agent serves every model and is not shutting down."""
        return self._status("/v2/health/ready") == 200

    def server_metadata(self) -> dict[str, Any]:
        """The agent's name, version and protocol extensions."""
        return self._json("GET", "/v2")

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """A model's metadata: ``name``, ``versions``, ``platform``, ``inputs``, ``outputs``."""
        return self._json("GET", _model_path(name, version))

    def metrics(self) -> str:
        """The Prometheus text the agent exports."""
        return self._request("GET", "/metrics").text

    def infer(
        self,
        name: str,
        inputs: Mapping[str, Array] | Array,
        version: str | None = None,
        timeout_ms: float | None = None,
    ) -> dict[str, NDArray[Any]]:
        """Run one request; ``inputs`` maps input names to arrays (or is the single input's array).

        Arrays carry the batch on the first axis; floating-point data is sent as FP32, as the
        agent expects. Returns the outputs keyed by name.
        """
        return self.predict(name, inputs, version, timeout_ms).outputs

    def predict(
        self,
        name: str,
        inputs: Mapping[str, Array] | Array,
        version: str | None = None,
        timeout_ms: float | None = None,
        request_id: str | None = None,
    ) -> Prediction:
        """As :meth:`infer`, with the answer's id (``request_id``, or the agent's) and version."""
        if not isinstance(inputs, Mapping):
            specs = self._input_specs(name, version)
            if len(specs) != 1:
                names = ", ".join(s["name"] for s in specs)
                raise ServingError(
                    f"model {name!r} has several inputs ({names}): pass a dict", status=400
                )
            inputs = {specs[0]["name"]: inputs}
        tensors: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for key, value in inputs.items():
            arr = np.asarray(value)
            if arr.dtype.kind == "f":
                arr = arr.astype(np.float32, copy=False)
            datatype = datatype_of(arr.dtype)
            if datatype is None:
                raise ServingError(f"input {key!r}: cannot send dtype {arr.dtype}", status=400)
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            tensors.append(
                {
                    "name": key,
                    "shape": list(arr.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
            blobs.append(blob)
        request: dict[str, Any] = {
            "inputs": tensors,
            "parameters": {"binary_data_output": True},
        }
        if timeout_ms is not None:
            request["parameters"]["timeout_ms"] = timeout_ms
        if request_id is not None:
            request["id"] = request_id
        header = json.dumps(request).encode()
        response = self._request(
            "POST",
            _model_path(name, version) + "/infer",
            content=b"".join([header, *blobs]),
            headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header)),
            },
        )
        return _decode_answer(response)

    def label(self, prediction_id: str, label: int | list[int]) -> dict[str, Any]:
        """Send the true label of a prediction (one class index, or one per sample).

        Returns the agent's result (``status`` ``accepted``); a duplicate, unknown, expired or
        invalid label raises :class:`~edgedl.errors.ServingError` with status 409, 404, 410
        or 400 and the agent's reason.
        """
        return self._json("POST", "/v2/labels", json={"id": prediction_id, "label": label})

    def labels(self, labels: Iterable[tuple[str, int | list[int]]]) -> dict[str, Any]:
        """Send many labels at once: ``{"counts": {status: n}, "results": [...]}``, in order.

        Each result says ``accepted``, ``duplicate``, ``unknown``, ``expired`` or ``invalid``.
        """
        items = [{"id": i, "label": label} for i, label in labels]
        return self._json("POST", "/v2/labels", json={"labels": items})

    def _input_specs(self, name: str, version: str | None) -> list[dict[str, Any]]:
        key = (name, version)
        if key not in self._inputs:
            self._inputs[key] = list(self.metadata(name, version)["inputs"])
        return self._inputs[key]

    def _status(self, path: str) -> int:
        try:
            return self._http.get(path).status_code
        except httpx.HTTPError:
            return 0

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data = self._request(method, path, **kwargs).json()
        if not isinstance(data, dict):
            raise ServingError(f"{path}: expected a JSON object from the agent", status=502)
        return data

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServingError(f"cannot reach the agent at {self.url}: {exc}", status=0) from exc
        if response.status_code >= 400:
            try:
                message = str(response.json().get("error") or response.text)
            except (ValueError, AttributeError):
                message = response.text or response.reason_phrase
            raise ServingError(message, status=response.status_code)
        return response


def _model_path(name: str, version: str | None) -> str:
    path = f"/v2/models/{name}"
    return f"{path}/versions/{version}" if version else path


def _decode_answer(response: httpx.Response) -> Prediction:
    body = response.content
    length = response.headers.get("Inference-Header-Content-Length")
    split = int(length) if length is not None else len(body)
    doc = json.loads(body[:split])
    outputs: dict[str, NDArray[Any]] = {}
    offset = split
    for out in doc.get("outputs", []):
        dtype = NUMPY_DTYPES.get(out["datatype"], np.dtype("<f4"))
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(body[offset : offset + size], dtype=dtype)
            offset += size
        else:
            arr = np.asarray(out["data"], dtype=dtype)
        outputs[out["name"]] = arr.reshape(out["shape"])
    answer_id = doc.get("id")
    version = doc.get("model_version")
    return Prediction(
        str(answer_id) if answer_id is not None else None,
        str(version) if version is not None else None,
        outputs,
    )
