"""What `edgedl loadtest` sends when a server's metadata is bare (MLServer) or names inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgedl.errors import DataError
from edgedl.loadtest.http import Endpoint
from edgedl.loadtest.requests import infer_requests, sample_shape

TRITON_LIKE = {
    "name": "m",
    "inputs": [
        {"name": "mask", "datatype": "INT64", "shape": [-1, 16]},
        {"name": "pixels", "datatype": "FP32", "shape": [-1, 8, 8, 1]},
    ],
}
BARE = {"name": "m", "versions": [], "platform": "", "inputs": [], "outputs": []}


def test_the_first_input_is_sent_unless_one_is_named():
    assert sample_shape(TRITON_LIKE, None) == ("mask", "INT64", [1, 16])
    assert sample_shape(TRITON_LIKE, None, "pixels") == ("pixels", "FP32", [1, 8, 8, 1])
    with pytest.raises(DataError, match="no input named 'image'"):
        sample_shape(TRITON_LIKE, None, "image")


def test_bare_metadata_takes_the_name_given_and_the_samples_type_and_shape():
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    assert sample_shape(BARE, x, "pixels") == ("pixels", "FP32", [1, 8, 8, 1])
    requests = infer_requests(
        Endpoint.parse("http://127.0.0.1:9"), "m", BARE, x, input_name="pixels"
    )
    body = json.loads(requests[1].split(b"\r\n\r\n", 1)[1])
    sent = body["inputs"][0]
    assert (sent["name"], sent["datatype"], sent["shape"]) == ("pixels", "FP32", [1, 8, 8, 1])
    assert np.array_equal(np.asarray(sent["data"], np.float32), x[1].ravel())


def test_bare_metadata_without_a_name_says_what_to_give():
    with pytest.raises(DataError, match="--input-name NAME and --inputs FILE"):
        sample_shape(BARE, None)
    with pytest.raises(DataError, match="cannot be sent"):
        sample_shape(BARE, np.zeros((2, 3), dtype=np.complex64), "z")
