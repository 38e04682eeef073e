"""load_dataset: every file format, every check, with real files on disk."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from edgedl.bundle import TensorSpec
from edgedl.converters.data import Dataset, load_dataset, load_named_inputs
from edgedl.errors import DataError

RATE = 16000


def _digit_images(per_class: int = 4, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 images (0-255) with their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.concatenate([np.flatnonzero(digits.target == c)[:per_class] for c in range(classes)])
    images = np.round(digits.images[keep] * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target[keep]


def _write_png_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Save images as ``root/<label>/<i>.png``; return ``{relative path: pixels}``."""
    from PIL import Image

    written = {}
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        rel = f"{label}/{i:04d}.png"
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel)
        written[rel] = img
    return written


def _sine(n: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(n) / RATE
    return np.round(amp * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")


def _write_wav(path: Path, pcm: np.ndarray, channels: int = 1, width: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


# --- .npy / .npz ------------------------------------------------------------------------


def test_npy(tmp_path):
    x = np.random.default_rng(0).random((120, 8, 8, 1))
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(tmp_path / "x.npy", (8, 8, 1))
    assert isinstance(ds, Dataset)
    assert ds.x.dtype == np.float32
    assert ds.x.shape == (120, 8, 8, 1)
    np.testing.assert_array_equal(ds.x, x.astype(np.float32))
    assert ds.y is None
    assert ds.source == str(tmp_path / "x.npy")
    assert len(ds) == 120
    assert ds.sample_name(3) == "#3"


def test_npy_with_dynamic_dimensions(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 7), np.int16))
    assert load_dataset(tmp_path / "x.npy", (-1,), role="validation").x.shape == (5, 7)


def test_npz_with_x_y_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((150, 4)).astype(np.float32)
    y = rng.integers(0, 3, 150)
    np.savez(tmp_path / "d.npz", x=x, y=y, labels=np.array(["cat", "dog", "eel"]))
    ds = load_dataset(tmp_path / "d.npz", (4,))
    np.testing.assert_array_equal(ds.x, x)
    assert ds.y is not None
    assert ds.y.dtype == np.int64
    np.testing.assert_array_equal(ds.y, y)
    assert ds.class_names == ["cat", "dog", "eel"]
    head = ds.head(10)
    assert len(head) == 10
    assert head.y is not None
    np.testing.assert_array_equal(head.y, y[:10])
    assert [b.shape[0] for b in ds.batches(64)] == [64, 64, 22]


def test_npz_without_x_names_the_keys(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 4)), targets=np.zeros(3))
    with pytest.raises(DataError, match="no array 'x'") as info:
        load_dataset(tmp_path / "d.npz", (4,))
    assert "found: images, targets" in str(info.value)


def test_npz_non_integer_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4)), y=np.array([0.5, 1.0, 2.0]))
    with pytest.raises(DataError, match="1-D integer"):
        load_dataset(tmp_path / "d.npz", (4,))


def test_labels_count_mismatch(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 4)), y=np.zeros(9, dtype=np.int64))
    with pytest.raises(DataError, match="10 samples but 9 labels"):
        load_dataset(tmp_path / "d.npz", (4,))


def test_non_numeric_npy(tmp_path):
    np.save(tmp_path / "x.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match="expected numbers"):
        load_dataset(tmp_path / "x.npy", (2,))


def test_unreadable_npy(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"this is not numpy")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(tmp_path / "x.npy", (2,))


@pytest.mark.parametrize("name", ["data.csv", "data.npy.gz", "data"])
def test_unsupported_suffix(tmp_path, name):
    (tmp_path / name).write_text("1,2,3\n")
    with pytest.raises(DataError, match="unsupported format") as info:
        load_dataset(tmp_path / name, (3,))
    assert (Path(name).suffix or "(none)") in str(info.value)


@pytest.mark.parametrize("role", ["calibration", "validation"])
def test_missing_path(tmp_path, role):
    with pytest.raises(DataError, match=f"{role} data not found") as info:
        load_dataset(tmp_path / "nowhere.npz", (4,), role=role)
    assert "nowhere.npz" in str(info.value)


def test_nan_names_the_sample(tmp_path):
    x = np.random.default_rng(2).random((20, 4))
    x[7, 2] = np.nan
    x[12, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / "x.npy", (4,))
    message = str(info.value)
    assert "#7" in message
    assert "NaN" in message
    assert "#12" not in message
    assert "1 more" in message


def test_inf_names_the_sample(tmp_path):
    x = np.random.default_rng(3).random((20, 4))
    x[3, 1] = -np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(DataError, match="Inf") as info:
        load_dataset(tmp_path / "x.npy", (4,), role="validation")
    message = str(info.value)
    assert "#3" in message
    assert "NaN" not in message
    assert message.startswith("validation sample")


def test_missing_channel_axis_is_added(tmp_path):
    x = np.random.default_rng(4).random((110, 8, 8))
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(tmp_path / "x.npy", (8, 8, 1))
    assert ds.x.shape == (110, 8, 8, 1)
    np.testing.assert_array_equal(ds.x[..., 0], x.astype(np.float32))


def test_wrong_shape_names_both_shapes(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 8, 9)))
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / "x.npy", (8, 8, 1))
    message = str(info.value)
    assert "[8, 9]" in message
    assert "[8, 8, 1]" in message


def test_wrong_shape_with_dynamic_dimensions(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 8, 9, 3)))
    with pytest.raises(DataError, match=r"samples have shape \[8, 9, 3\], the model input expects"):
        load_dataset(tmp_path / "x.npy", (-1, -1, 1))


def test_empty_array_is_a_data_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((0, 4), np.float32))
    with pytest.raises(DataError, match="holds no samples"):
        load_dataset(tmp_path / "x.npy", (4,))


# --- image folders ----------------------------------------------------------------------


def test_png_folder_with_class_subfolders(tmp_path):
    images, labels = _digit_images(per_class=4)
    written = _write_png_folder(tmp_path / "digits", images, labels)
    ds = load_dataset(tmp_path / "digits", (8, 8, 1))
    assert ds.x.shape == (40, 8, 8, 1)
    assert ds.x.dtype == np.float32
    assert ds.x.min() >= 0.0
    assert ds.x.max() <= 1.0
    assert ds.x.max() > 0.9  # the digits use the full range
    assert ds.class_names == [str(c) for c in range(10)]
    assert ds.sample_names is not None
    assert sorted(ds.sample_names) == sorted(written)
    assert ds.y is not None
    for i, name in enumerate(ds.sample_names):
        np.testing.assert_allclose(ds.x[i, :, :, 0], written[name] / 255.0, atol=1 / 255)
        assert ds.y[i] == int(name.split("/")[0])
        assert ds.class_names[ds.y[i]] == name.split("/")[0]
        assert ds.sample_name(i) == name


def test_png_folder_rgb_and_resized(tmp_path):
    images, labels = _digit_images(per_class=1, classes=2)
    written = _write_png_folder(tmp_path / "d", images, labels)
    rgb = load_dataset(tmp_path / "d", (8, 8, 3), role="validation")
    assert rgb.x.shape == (2, 8, 8, 3)
    for i, name in enumerate(rgb.sample_names or []):
        for c in range(3):
            np.testing.assert_allclose(rgb.x[i, :, :, c], written[name] / 255.0, atol=1 / 255)
    big = load_dataset(tmp_path / "d", (16, 12, 1), role="validation")
    assert big.x.shape == (2, 16, 12, 1)
    assert big.x.min() >= 0.0
    assert big.x.max() <= 1.0


def test_flat_image_folder_has_no_labels(tmp_path):
    from PIL import Image

    images, _ = _digit_images(per_class=1, classes=3)

    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    ds = load_dataset(tmp_path, (8, 8, 1), role="validation")
    assert ds.x.shape == (3, 8, 8, 1)
    assert ds.y is None
    assert ds.class_names is None
    assert ds.sample_names == ["0.png", "1.png", "2.png"]


def test_images_need_an_image_shaped_input(tmp_path):
    images, labels = _digit_images(per_class=1, classes=2)
    _write_png_folder(tmp_path, images, labels)
    with pytest.raises(DataError, match="height, width, channels"):
        load_dataset(tmp_path, (64,))
    with pytest.raises(DataError, match="height, width, channels"):
        load_dataset(tmp_path, (-1, -1, 1))


def test_corrupt_png_names_the_file(tmp_path):
    images, labels = _digit_images(per_class=2, classes=2)
    _write_png_folder(tmp_path, images, labels)
    (tmp_path / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"broken\.png") as info:
        load_dataset(tmp_path, (8, 8, 1))
    assert "cannot read image" in str(info.value)


def test_images_for_a_four_channel_input(tmp_path):
    images, labels = _digit_images(per_class=1, classes=2)
    _write_png_folder(tmp_path, images, labels)
    with pytest.raises(DataError):
        load_dataset(tmp_path, (8, 8, 4))


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match=r"no images or \.wav files"):
        load_dataset(tmp_path, (8, 8, 1))


def test_mixed_images_and_wav(tmp_path):
    images, labels = _digit_images(per_class=1, classes=2)
    _write_png_folder(tmp_path, images, labels)
    _write_wav(tmp_path / "0" / "clip.wav", _sine(RATE))
    with pytest.raises(DataError, match="mixes images and WAV"):
        load_dataset(tmp_path, (8, 8, 1))


def _write_flat_pngs(root: Path, images: np.ndarray) -> list[np.ndarray]:
    """Save ``images`` (uint8, H x W or H x W x 3) as ``root/<i>.png``, in name order."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(root / f"{i}.png")
    return list(images)


def _onnx_model(path: Path, sample_shape: list[int]) -> Path:
    """A tiny ONNX model (Identity) whose input takes ``[batch, *sample_shape]``."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *sample_shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", *sample_shape])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("sample_shape", "want"),
    [((1, 8, 8), (1, 8, 8)), ((3, 8, 8), (3, 8, 8)), ((3, 16, 12), (3, 16, 12))],
)
def test_png_folder_for_a_channels_first_input(tmp_path, sample_shape, want):
    images, _ = _digit_images(per_class=1, classes=3)
    written = _write_flat_pngs(tmp_path / "imgs", images)
    ds = load_dataset(tmp_path / "imgs", sample_shape, role="validation")
    assert ds.x.shape == (3, *want)
    if want[1:] == (8, 8):
        for i, img in enumerate(written):
            for c in range(want[0]):
                np.testing.assert_allclose(ds.x[i, c], img / 255.0, atol=1 / 255)


def test_png_folder_rgb_channels_first_keeps_the_colours(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 8, 6, 3), dtype=np.uint8)
    written = _write_flat_pngs(tmp_path / "rgb", images)
    nchw = load_dataset(tmp_path / "rgb", (3, 8, 6), role="validation")
    nhwc = load_dataset(tmp_path / "rgb", (8, 6, 3), role="validation")
    assert nchw.x.shape == (2, 3, 8, 6)
    assert nhwc.x.shape == (2, 8, 6, 3)
    for i, img in enumerate(written):
        np.testing.assert_allclose(nchw.x[i], img.transpose(2, 0, 1) / 255.0, atol=1e-6)
        np.testing.assert_allclose(nhwc.x[i], img / 255.0, atol=1e-6)


def test_png_folder_ambiguous_shape_stays_channels_last(tmp_path):
    images, _ = _digit_images(per_class=1, classes=2)
    _write_flat_pngs(tmp_path / "imgs", images)
    ds = load_dataset(tmp_path / "imgs", (3, 8, 3), role="validation")
    assert ds.x.shape == (2, 3, 8, 3)  # [H, W, C] = [3, 8, 3]: resized, channels last


def test_png_folder_errors_name_the_folder(tmp_path):
    images, _ = _digit_images(per_class=1, classes=2)
    folder = tmp_path / "my-images"
    _write_flat_pngs(folder, images)
    for shape in [(8, 8, 8), (64,), (3, -1, -1), (-1, -1, 1)]:
        with pytest.raises(DataError) as info:
            load_dataset(folder, shape, role="validation")
        assert str(folder) in str(info.value), shape
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="cannot read image") as info:
        load_dataset(folder, (1, 8, 8))
    assert str(folder / "broken.png") in str(info.value)


@pytest.mark.parametrize("sample_shape", [[1, 8, 8], [3, 8, 8]])
def test_png_folder_for_an_nchw_onnx_model(tmp_path, sample_shape):
    """``edgedl convert model.onnx --validation imgs/``: the images come in the model's layout."""
    from edgedl.converters.convert import ConvertOptions, load_inputs
    from edgedl.converters.targets import get_target

    images, _ = _digit_images(per_class=1, classes=4)
    written = _write_flat_pngs(tmp_path / "imgs", images)
    model = _onnx_model(tmp_path / "nchw.onnx", sample_shape)
    options = ConvertOptions(calibration=tmp_path / "imgs", validation=tmp_path / "imgs")
    work = tmp_path / "work"
    work.mkdir()
    source, calibration, validation, _ = load_inputs(model, options, get_target("onnx-int8"), work)
    assert source.inputs[0].sample_shape[-3:] == tuple(sample_shape)
    for ds in (calibration, validation):
        assert ds is not None
        assert ds.x.shape == (4, *sample_shape)
        for i, img in enumerate(written):
            for c in range(sample_shape[0]):
                np.testing.assert_allclose(ds.x[i, c], img / 255.0, atol=1 / 255)
    # The source model runs on them as loaded.
    assert validation is not None
    out = source.predict(validation.feeds(source.inputs[0].name))
    np.testing.assert_allclose(next(iter(out.values())), validation.x)


# --- WAV folders ------------------------------------------------------------------------


def test_wav_folder_padded_and_cropped(tmp_path):
    short = _sine(RATE // 2, freq=440.0)
    long = _sine(RATE * 3 // 2, freq=1000.0)
    _write_wav(tmp_path / "yes" / "a.wav", short)
    _write_wav(tmp_path / "no" / "b.wav", long)
    ds = load_dataset(tmp_path, (RATE,), role="validation")
    assert ds.x.shape == (2, RATE)
    assert ds.x.dtype == np.float32
    assert ds.sample_names == ["no/b.wav", "yes/a.wav"]
    assert ds.class_names == ["no", "yes"]
    assert ds.y is not None
    assert ds.y.tolist() == [0, 1]
    # cropped: the first second of the long clip
    np.testing.assert_allclose(ds.x[0], long[:RATE] / 32768.0, atol=1 / 32768)
    # padded: the short clip, then silence
    np.testing.assert_allclose(ds.x[1, : RATE // 2], short / 32768.0, atol=1 / 32768)
    assert np.all(ds.x[1, RATE // 2 :] == 0.0)
    assert np.abs(ds.x).max() == pytest.approx(0.5, abs=1e-3)


def test_wav_stereo_is_averaged_and_shaped(tmp_path):
    left = _sine(RATE)
    right = (left // 2).astype("<i2")
    stereo = np.stack([left, right], axis=1).ravel()
    _write_wav(tmp_path / "s.wav", stereo, channels=2)
    ds = load_dataset(tmp_path, (RATE, 1), role="validation")
    assert ds.x.shape == (1, RATE, 1)
    expected = (left.astype(np.float64) + right) / 2 / 32768.0
    np.testing.assert_allclose(ds.x[0, :, 0], expected, atol=1 / 32768)


def test_wav_must_be_16_bit(tmp_path):
    _write_wav(tmp_path / "a.wav", np.full(100, 128, np.uint8), width=1)
    with pytest.raises(DataError, match="16-bit") as info:
        load_dataset(tmp_path, (RATE,))
    assert "a.wav" in str(info.value)


def test_wav_needs_a_fixed_length(tmp_path):
    _write_wav(tmp_path / "a.wav", _sine(100))
    with pytest.raises(DataError, match="fixed input length"):
        load_dataset(tmp_path, (-1,))


def test_corrupt_wav_names_the_file(tmp_path):
    _write_wav(tmp_path / "good.wav", _sine(100))
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(DataError, match=r"bad\.wav") as info:
        load_dataset(tmp_path, (RATE,))
    assert "cannot read WAV" in str(info.value)


_TOKEN_SPECS = [
    TensorSpec(name="input_ids", shape=[-1, -1], dtype="int64"),
    TensorSpec(name="attention_mask", shape=[-1, -1], dtype="int64"),
]


def test_named_inputs_keep_their_integers(tmp_path: Path) -> None:
    ids = np.array([[101, 7592, 102, 0], [101, 2088, 2003, 102]], dtype=np.int32)
    np.savez(tmp_path / "t.npz", input_ids=ids, attention_mask=(ids > 0).astype(np.int64))
    ds = load_named_inputs(tmp_path / "t.npz", _TOKEN_SPECS)
    assert ds.inputs is not None and list(ds.inputs) == ["input_ids", "attention_mask"]
    assert ds.inputs["input_ids"].dtype == np.int64
    assert ds.inputs["input_ids"].tolist() == ids.tolist()
    assert len(ds) == 2 and len(ds.head(1)) == 1
    assert ds.feeds("input_ids", 1, 2)["attention_mask"].tolist() == [[1, 1, 1, 1]]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"input_ids": np.ones((2, 4), np.int64)}, "no array for input 'attention_mask'"),
        (
            {"input_ids": np.ones((2, 4)), "attention_mask": np.ones((2, 4), np.int64)},
            "input 'input_ids' takes int64, the file holds float64",
        ),
        (
            {"input_ids": np.ones((2, 4), np.int64), "attention_mask": np.ones((3, 4), np.int64)},
            "different numbers of samples",
        ),
    ],
)
def test_named_inputs_name_what_is_wrong(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_named_inputs(tmp_path / "t.npz", _TOKEN_SPECS, "validation")
