"""Samples for retraining in the collector: stored once each, labelled late, exported.

Messages go through the real :class:`Ingestor` into SQLite and PostgreSQL; the export is read
back with numpy and by the converter's own loader; the CLI answers a filter that matches
nothing with one line and a non-zero exit.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tests.agent.serving_helpers import digit_images

from edgedl.collector.ingest import Ingestor, Message
from edgedl.collector.samples import export_samples
from edgedl.collector.store import Store
from edgedl.converters.data import load_dataset
from edgedl.errors import DataError
from edgedl.samples import SampleLabel, SampleMessage, SampleTensor, encode_sample, samples_topic

EDGEDL = str(Path(sys.executable).with_name("edgedl"))
TOPIC = samples_topic("f", "d")


def sample(i: int, image: np.ndarray, reason: str = "rate") -> SampleMessage:
    return SampleMessage(
        id=f"f:d:e:{i}", fleet="f", device="d", model="digits", version="1",
        time=time.time() - 100 + i, reason=reason, predicted=i % 10, confidence=0.5,  # type: ignore[arg-type]
        inputs={"x": SampleTensor.of(image)},
    )  # fmt: skip


def test_samples_are_stored_once_labelled_late_and_exported(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    ingest = Ingestor(store)
    images = digit_images(6)
    first = [Message(TOPIC, encode_sample(sample(i, images[i])), qos=1) for i in range(4)]
    label_early = Message(
        TOPIC, encode_sample(SampleLabel(id="f:d:e:5", fleet="f", device="d", label=3))
    )
    hostile = [
        Message(TOPIC, b"\x00not json"),
        Message(samples_topic("f", "other"), encode_sample(sample(9, images[0]))),
        Message(TOPIC, encode_sample(sample(8, images[0])).replace(b'"data":"', b'"data":"AAAA')),
    ]
    result = ingest.ingest([*first, label_early, *hostile])
    assert result.samples == 4 and result.samples_duplicate == 0 and len(result.dead) == 3
    # Delivered again (QoS 1), plus the rest: each sample once, labels before or after it.
    again = ingest.ingest([
        *first, Message(TOPIC, encode_sample(sample(4, images[4], "low_confidence"))),
        Message(TOPIC, encode_sample(sample(5, images[5]))),
        Message(TOPIC, encode_sample(SampleLabel(id="f:d:e:0", fleet="f", device="d", label=0))),
    ])  # fmt: skip
    assert again.samples == 2 and again.samples_duplicate == len(first)  # counted, not stored
    everything = export_samples(store, fleet="f")
    assert len(everything) == 6 and everything.labelled == 2
    np.testing.assert_array_equal(everything.x, images)
    assert list(everything.label) == [0, -1, -1, -1, -1, 3]
    assert list(export_samples(store, reason="low_confidence").metadata["sample_id"]) == ["f:d:e:4"]
    labelled = export_samples(store, labelled_only=True)
    path = labelled.save(tmp_path / "data.npz")
    loaded = load_dataset(path, (8, 8, 1), "calibration")  # as edgedl convert reads it
    assert loaded.y is not None and list(loaded.y) == [0, 3] and loaded.x.shape == (2, 8, 8, 1)
    assert "y" not in np.load(everything.save(tmp_path / "all.npz"))  # not every label known
    with pytest.raises(DataError, match="no stored samples match device nobody"):
        export_samples(store, device="nobody")
    store.close()


def test_export_cli_writes_the_dataset_and_refuses_an_empty_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = Store(url)
    Ingestor(store).ingest([Message(TOPIC, encode_sample(sample(0, digit_images(1)[0])))])
    store.close()
    ok = subprocess.run([EDGEDL, "collector", "export", "--db", url, "--since", "2020-01-01",
                         "--output", str(tmp_path / "d.npz")], capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "wrote 1 samples (0 labelled)" in ok.stdout
    empty = subprocess.run([EDGEDL, "collector", "export", "--db", url, "--reason", "low_confidence",
                            "--output", str(tmp_path / "e.npz")], capture_output=True, text=True)  # fmt: skip
    assert empty.returncode != 0 and "Traceback" not in empty.stderr
    assert "no stored samples match reason low_confidence" in empty.stderr
    assert not (tmp_path / "e.npz").exists()
    bad = subprocess.run([EDGEDL, "collector", "export", "--db", url, "--since", "yesterday",
                          "--output", str(tmp_path / "f.npz")], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "--since 'yesterday'" in bad.stderr
