"""The data readers on real small files, their errors, the model checks and batching."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunecli.config.schema import DataSpec
from prunecli.data import DataSet, batches, check_against_model, load_data
from prunecli.data.dataset import make_split
from prunecli.data.registry import get_reader, known_formats, register_reader
from prunecli.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _arrays(count: int = 6, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((count, 1, 2, 2)).astype(np.float32), np.arange(count, dtype=np.int64) % 3


def _write_csv(path: Path, rows: list[list[object]], header: list[str]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def _write_png(path: Path, color: tuple[int, int, int], *, size: tuple[int, int] = (4, 3)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


# --- readers ---------------------------------------------------------------------------------


def test_npz_reads_train_and_eval_relative_to_base_dir(tmp_path: Path) -> None:
    inputs, labels = _arrays()
    np.savez(tmp_path / "train.npz", inputs=inputs.astype(np.float64), labels=labels.astype(np.int32))
    np.savez(tmp_path / "val.npz", x=inputs[:2], y=labels[:2])
    data = load_data(DataSpec(format="npz", train=Path("train.npz"), eval=Path("val.npz")), base_dir=tmp_path)
    assert data.train.inputs.dtype == np.float32 and data.train.labels.dtype == np.int64
    np.testing.assert_allclose(data.train.inputs, inputs)
    np.testing.assert_array_equal(data.eval.labels, labels[:2])
    assert (len(data.train), len(data.eval), data.num_classes, data.sample_input_shape) == (6, 2, 3, (1, 2, 2))


def test_npz_eval_only_and_scale(tmp_path: Path) -> None:
    inputs, labels = _arrays()
    np.savez(tmp_path / "val.npz", inputs=inputs, labels=labels)
    data = load_data(DataSpec(format="npz", eval=tmp_path / "val.npz", scale=2.0), base_dir=Path("/nonexistent"))
    assert data.train is None
    assert data.eval.inputs.dtype == np.float32
    np.testing.assert_allclose(data.eval.inputs, inputs * 2.0)


def test_pt_reads_a_dict_of_tensors(tmp_path: Path) -> None:
    inputs, labels = _arrays()
    torch.save({"inputs": torch.from_numpy(inputs).half(), "labels": torch.from_numpy(labels)}, tmp_path / "d.pt")
    data = load_data(DataSpec(format="pt", train=Path("d.pt")), base_dir=tmp_path)
    np.testing.assert_allclose(data.train.inputs, inputs, atol=1e-3)
    np.testing.assert_array_equal(data.train.labels, labels)


def test_pt_refuses_pickled_objects(tmp_path: Path) -> None:
    torch.save({"inputs": torch.zeros(2, 3), "labels": torch.zeros(2), "extra": Path("x")}, tmp_path / "d.pt")
    with pytest.raises(InputError, match="pickled objects besides tensors"):
        load_data(DataSpec(format="pt", train=Path("d.pt")), base_dir=tmp_path)


def test_csv_reads_features_and_label_column(tmp_path: Path) -> None:
    _write_csv(tmp_path / "d.csv", [[0.5, 1, 2, 3], [0.25, 0, 4, 5]], header=["a", "target", "b", "c"])
    data = load_data(DataSpec(format="csv", eval=Path("d.csv"), label_column="target"), base_dir=tmp_path)
    np.testing.assert_allclose(data.eval.inputs, [[0.5, 2, 3], [0.25, 4, 5]])
    np.testing.assert_array_equal(data.eval.labels, [1, 0])


def test_csv_sample_file_reshapes_to_the_digits_input() -> None:
    data = load_data(DataSpec(format="csv", eval=Path("digits_val.csv")), base_dir=REPO / "sample_models")
    assert data.sample_input_shape == (64,)
    fitted = check_against_model(data, input_shape=[1, 1, 8, 8], num_outputs=10)
    npz = load_data(DataSpec(format="npz", eval=Path("digits_val.npz")), base_dir=REPO / "sample_models")
    np.testing.assert_allclose(fitted.eval.inputs, npz.eval.inputs, atol=1e-6)
    np.testing.assert_array_equal(fitted.eval.labels, npz.eval.labels)


def test_csv_errors_name_the_row_or_column(tmp_path: Path) -> None:
    _write_csv(tmp_path / "d.csv", [[1, "abc"]], header=["label", "p0"])
    with pytest.raises(InputError, match=r"line 2, column 'p0': 'abc' is not a number"):
        load_data(DataSpec(format="csv", eval=Path("d.csv")), base_dir=tmp_path)
    _write_csv(tmp_path / "d.csv", [[1, 2]], header=["y", "p0"])
    with pytest.raises(InputError, match="no column 'label'.*set data.label_column"):
        load_data(DataSpec(format="csv", eval=Path("d.csv")), base_dir=tmp_path)


def test_image_folder_sorts_classes_and_makes_chw(tmp_path: Path) -> None:
    for split, count in (("train", 2), ("val", 1)):
        for index in range(count):
            _write_png(tmp_path / split / "dog" / f"{index}.png", (255, 0, 0))
            _write_png(tmp_path / split / "cat" / f"{index}.png", (0, 0, 255))
    spec = DataSpec(format="image_folder", train=Path("train"), eval=Path("val"))
    data = load_data(spec, base_dir=tmp_path)
    assert data.train.inputs.shape == (4, 3, 3, 4)  # (N, C, H, W): PNGs are 4 wide, 3 high
    np.testing.assert_array_equal(data.train.labels, [0, 0, 1, 1])  # cat -> 0, dog -> 1
    np.testing.assert_allclose(data.train.inputs[0, :, 0, 0], [0, 0, 1])  # a blue cat
    np.testing.assert_allclose(data.train.inputs[2, :, 0, 0], [1, 0, 0])  # a red dog


def test_image_folder_resizes_to_grayscale(tmp_path: Path) -> None:
    _write_png(tmp_path / "a" / "0.png", (255, 255, 255), size=(5, 5))
    _write_png(tmp_path / "b" / "0.jpg", (0, 0, 0), size=(7, 3))
    spec = DataSpec(format="image_folder", eval=tmp_path, image_size=[2, 6], grayscale=True)
    data = load_data(spec, base_dir=Path("/nonexistent"))
    assert data.eval.inputs.shape == (2, 1, 2, 6)
    assert data.eval.inputs.min() >= 0.0 and data.eval.inputs.max() <= 1.0
    assert data.eval.inputs[0].mean() > 0.99 and data.eval.inputs[1].mean() < 0.01


def test_image_folder_errors(tmp_path: Path) -> None:
    _write_png(tmp_path / "a" / "0.png", (0, 0, 0), size=(4, 4))
    _write_png(tmp_path / "b" / "0.png", (0, 0, 0), size=(5, 4))
    with pytest.raises(InputError, match="different sizes.*data.image_size"):
        load_data(DataSpec(format="image_folder", eval=tmp_path), base_dir=tmp_path)
    _write_png(tmp_path / "other" / "c" / "0.png", (0, 0, 0), size=(4, 4))
    with pytest.raises(InputError, match="train classes"):
        load_data(DataSpec(format="image_folder", train=tmp_path, eval=tmp_path / "other"), base_dir=tmp_path)
    (tmp_path / "b" / "0.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image"):
        load_data(DataSpec(format="image_folder", eval=tmp_path), base_dir=tmp_path)


def test_digits_matches_the_sample_files() -> None:
    spec = DataSpec(format="digits", train=Path("ignored.npz"))
    data = load_data(spec, base_dir=Path("/nonexistent"))
    assert (len(data.train), len(data.eval), data.num_classes, data.sample_input_shape) == (1437, 360, 10, (1, 8, 8))
    assert data.train.inputs.min() == 0.0 and data.train.inputs.max() == 1.0
    sample = load_data(DataSpec(format="npz", eval=Path("digits_val.npz")), base_dir=REPO / "sample_models")
    np.testing.assert_array_equal(data.eval.inputs, sample.eval.inputs)
    np.testing.assert_array_equal(data.eval.labels, sample.eval.labels)


# --- 8-bit inputs ----------------------------------------------------------------------------


def _pixels() -> tuple[np.ndarray, np.ndarray]:
    """Two 3x2x2 uint8 images, pixels 0..255, and their labels."""
    return np.arange(0, 256, 22, dtype=np.uint8).reshape(2, 3, 2, 1).repeat(2, axis=3), np.array([0, 1])


def _write_image_folder(root: Path, pixels: np.ndarray) -> None:
    for index, image in enumerate(pixels):  # one class folder per image: labels 0, 1
        (root / f"c{index}").mkdir(parents=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(root / f"c{index}" / "0.png")


def test_uint8_inputs_are_divided_by_255_in_every_format(tmp_path: Path) -> None:
    pixels, labels = _pixels()
    np.savez(tmp_path / "d.npz", inputs=pixels, labels=labels)
    torch.save({"inputs": torch.from_numpy(pixels), "labels": torch.from_numpy(labels)}, tmp_path / "d.pt")
    _write_image_folder(tmp_path / "images", pixels)
    specs = [("npz", "d.npz"), ("pt", "d.pt"), ("image_folder", "images")]
    for data_format, name in specs:
        data = load_data(DataSpec(format=data_format, eval=Path(name)), base_dir=tmp_path)
        assert data.format == data_format and data.eval.inputs.dtype == np.float32
        np.testing.assert_allclose(data.eval.inputs, pixels / 255.0, rtol=1e-6, err_msg=data_format)
        np.testing.assert_array_equal(data.eval.labels, labels)
    scaled = load_data(DataSpec(format="npz", eval=Path("d.npz"), scale=2.0), base_dir=tmp_path)
    np.testing.assert_allclose(scaled.eval.inputs, pixels / 255.0 * 2.0, rtol=1e-6)  # scale comes after


def test_other_dtypes_and_csv_keep_their_values(tmp_path: Path) -> None:
    pixels, labels = _pixels()
    np.savez(tmp_path / "d.npz", inputs=pixels.astype(np.int16), labels=labels)
    data = load_data(DataSpec(format="npz", eval=Path("d.npz")), base_dir=tmp_path)
    np.testing.assert_array_equal(data.eval.inputs, pixels)
    _write_csv(tmp_path / "d.csv", [[0, 255, 128]], header=["label", "p0", "p1"])
    data = load_data(DataSpec(format="csv", eval=Path("d.csv")), base_dir=tmp_path)
    np.testing.assert_array_equal(data.eval.inputs, [[255, 128]])  # text: used as written


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("data_format", ["npz", "pt", "csv", "image_folder"])
def test_missing_file_names_the_field(tmp_path: Path, data_format: str) -> None:
    with pytest.raises(InputError) as caught:
        load_data(DataSpec(format=data_format, train=Path("nope")), base_dir=tmp_path)
    assert str(caught.value) == f"data file not found: {tmp_path / 'nope'}; check data.train or pass --data"


def test_no_file_given(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="set data.train and/or data.eval"):
        load_data(DataSpec(format="npz"), base_dir=tmp_path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize(("data_format", "name"), [("npz", "d.npz"), ("pt", "d.pt"), ("csv", "d.csv")])
def test_corrupt_file(tmp_path: Path, data_format: str, name: str) -> None:
    (tmp_path / name).write_bytes(b"\x80\x81garbage\xff" * 10)
    with pytest.raises(InputError) as caught:
        load_data(DataSpec(format=data_format, train=Path(name)), base_dir=tmp_path)
    assert str(caught.value).startswith(f"cannot read {tmp_path / name}") and "\n" not in str(caught.value)


def test_npy_file_is_not_an_archive(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((2, 3)))
    with pytest.raises(InputError, match="single .npy array"):
        load_data(DataSpec(format="npz", train=Path("d.npy")), base_dir=tmp_path)


@pytest.mark.parametrize("data_format", ["npz", "pt"])
def test_missing_keys_lists_what_is_there(tmp_path: Path, data_format: str) -> None:
    if data_format == "npz":
        np.savez(tmp_path / "d", images=np.zeros((2, 3)), labels=np.zeros(2))
    else:
        torch.save({"images": torch.zeros(2, 3), "labels": torch.zeros(2)}, tmp_path / "d")
    with pytest.raises(InputError, match="needs keys 'inputs' and 'labels'.*has images, labels"):
        load_data(DataSpec(format=data_format, train=Path("d.npz" if data_format == "npz" else "d")), base_dir=tmp_path)


@pytest.mark.parametrize(
    ("inputs", "labels", "message"),
    [
        (np.zeros((2, 3)), np.array([0.5, 1.0]), "integer class indices, found 0.5"),
        (np.zeros((2, 3)), np.array([0, -1]), ">= 0, found -1"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), "2 inputs but 3 labels"),
        (np.zeros((2, 3)), np.eye(2), "not one-hot"),
        (np.zeros((0, 3)), np.zeros(0), "no samples"),
        (np.array([[np.nan, 0.0]]), np.array([0]), "NaN or infinity"),
        (np.array(["a", "b"]), np.array([0, 1]), "numeric inputs"),
    ],
)
def test_bad_arrays(inputs: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        make_split(inputs, labels, source="d.npz")


def test_bad_labels_in_a_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.zeros((2, 3)), labels=np.array([1, -2]))
    with pytest.raises(InputError, match=r"d.npz: labels must be >= 0, found -2"):
        load_data(DataSpec(format="npz", train=Path("d.npz")), base_dir=tmp_path)


def test_train_and_eval_shapes_must_agree() -> None:
    train = make_split(np.zeros((2, 3)), np.zeros(2), source="train")
    with pytest.raises(InputError, match=r"train inputs have shape \(3,\).*eval inputs have \(4,\)"):
        DataSet(train=train, eval=make_split(np.zeros((2, 4)), np.zeros(2), source="eval"))


# --- registry --------------------------------------------------------------------------------


def test_registry_knows_every_schema_format_and_refuses_duplicates() -> None:
    assert known_formats() == ["csv", "digits", "image_folder", "npz", "pt"]
    with pytest.raises(ValueError, match="registered twice"):
        register_reader("npz", get_reader("npz"))
    with pytest.raises(InputError, match="unknown data format 'npy'.*did you mean 'npz'"):
        get_reader("npy")


# --- checks against the model ----------------------------------------------------------------


def _data(shape: tuple[int, ...], labels: list[int]) -> DataSet:
    inputs = np.arange(len(labels) * np.prod(shape)).reshape(len(labels), *shape)
    split = make_split(inputs, np.array(labels), source="d")
    return DataSet(train=split, eval=split)


def test_check_reshapes_flat_features() -> None:
    data = _data((64,), [0, 9])
    fitted = check_against_model(data, input_shape=[1, 1, 8, 8], num_outputs=10)
    assert fitted.train.inputs.shape == (2, 1, 8, 8) and fitted.eval.inputs.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(fitted.train.inputs.reshape(2, 64), data.train.inputs)
    assert check_against_model(fitted, input_shape=[4, 1, 8, 8], num_outputs=None) is fitted


def test_check_refuses_a_different_shape() -> None:
    with pytest.raises(InputError) as caught:
        check_against_model(_data((3, 32, 32), [0]), input_shape=[1, 1, 8, 8], num_outputs=10)
    assert str(caught.value) == (
        "data inputs have shape (3, 32, 32) per sample but the model expects (1, 8, 8); fix data or model.input_shape"
    )


def _rgb_folder(tmp_path: Path) -> DataSet:
    _write_png(tmp_path / "a" / "0.png", (255, 0, 0), size=(8, 8))
    return load_data(DataSpec(format="image_folder", eval=tmp_path), base_dir=tmp_path)


@pytest.mark.parametrize(
    ("input_shape", "fix"),
    [
        ([1, 1, 8, 8], "set data.grayscale: true"),
        ([1, 3, 4, 6], "set data.image_size: [4, 6]"),
        ([1, 1, 16, 16], "set data.grayscale: true and set data.image_size: [16, 16]"),
        ([1, 192], "image_folder gives (1 or 3, height, width) images; "
         "fix model.input_shape or use another data.format"),
    ],
)
def test_check_names_the_image_folder_fix(tmp_path: Path, input_shape: list[int], fix: str) -> None:
    with pytest.raises(InputError) as caught:
        check_against_model(_rgb_folder(tmp_path), input_shape=input_shape, num_outputs=None)
    expected = tuple(input_shape[1:])
    assert str(caught.value) == f"data inputs have shape (3, 8, 8) per sample but the model expects {expected}; {fix}"


def test_check_names_grayscale_false_for_an_rgb_model(tmp_path: Path) -> None:
    _write_png(tmp_path / "a" / "0.png", (255, 0, 0), size=(8, 8))
    data = load_data(DataSpec(format="image_folder", eval=tmp_path, grayscale=True), base_dir=tmp_path)
    with pytest.raises(InputError, match="set data.grayscale: false$"):
        check_against_model(data, input_shape=[1, 3, 8, 8], num_outputs=None)


def test_check_refuses_channels_last_arrays() -> None:
    with pytest.raises(InputError, match=r"\(8, 8, 3\).*channels-last; save them as \(samples, channels"):
        check_against_model(_data((8, 8, 3), [0]), input_shape=[1, 3, 8, 8], num_outputs=None)


def test_check_refuses_labels_beyond_the_outputs() -> None:
    with pytest.raises(InputError, match="labels go up to 11 but the model has 10 outputs"):
        check_against_model(_data((64,), [0, 11]), input_shape=[1, 64], num_outputs=10)


# --- batches ---------------------------------------------------------------------------------


def test_batches_cover_the_split_deterministically() -> None:
    split = make_split(*_arrays(10), source="d")
    plain = list(batches(split, batch_size=4))
    assert [len(labels) for _, labels in plain] == [4, 4, 2]
    assert plain[0][0].dtype == torch.float32 and plain[0][1].dtype == torch.int64
    torch.testing.assert_close(torch.cat([inputs for inputs, _ in plain]), torch.from_numpy(split.inputs))

    def order(seed: int) -> list[float]:
        shuffled = batches(split, batch_size=3, shuffle=True, seed=seed)
        return [float(value) for inputs, _ in shuffled for value in inputs[:, 0, 0, 0]]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == sorted(float(x) for x in split.inputs[:, 0, 0, 0])
