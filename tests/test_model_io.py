"""Loading and saving models on tiny real files: every format, the pickle refusal, errors, atomic writes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from prunecli.config.schema import ModelSpec
from prunecli.errors import InputError, InternalError
from prunecli.model_io import LoadedModel, export_onnx, load_model, save_model, save_onnx_model
from prunecli.model_io.arch import build_module
from prunecli.model_io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from prunecli.model_io.outputs import first_tensor
from prunecli.model_io.plan_file import compose_keep

SHAPE = [1, 1, 8, 8]

ARCH_SOURCE = '''
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 64, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().flatten(1))
'''


def _tiny_sequential() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)).eval()


@pytest.fixture
def arch_file(tmp_path: Path) -> Path:
    path = tmp_path / "archs.py"
    path.write_text(ARCH_SOURCE)
    return path


def _trained_tiny_net(arch_file: Path) -> nn.Module:
    """A TinyNet from the arch file with non-default weights and BatchNorm statistics."""
    module = build_module("archs.py:TinyNet", {}, base_dir=arch_file.parent)
    torch.manual_seed(1)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.1)
    return module.eval()


def _load(tmp_path: Path, *, trust_pickle: bool = False, **fields) -> LoadedModel:
    return load_model(ModelSpec(**fields), base_dir=tmp_path, trust_pickle=trust_pickle)


def _outputs_match(first: nn.Module, second: nn.Module, *, batch: int = 2) -> bool:
    inputs = torch.randn(batch, *SHAPE[1:])
    with torch.no_grad():
        return torch.allclose(first(inputs), second(inputs), atol=1e-6)


def _files(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


# --- state_dict + arch -----------------------------------------------------------------------


def test_state_dict_with_file_arch_round_trips(tmp_path, arch_file):
    original = _trained_tiny_net(arch_file)
    torch.save(original.state_dict(), tmp_path / "net.pt")
    loaded = _load(tmp_path, path="net.pt", arch="archs.py:TinyNet", input_shape=SHAPE)
    assert loaded.format == "state_dict"
    assert loaded.arch == f"{arch_file.resolve()}:TinyNet"  # absolute: a saved plan replays from anywhere
    assert loaded.input_shape == tuple(SHAPE) and loaded.onnx_path is None
    assert not loaded.module.training
    assert _outputs_match(loaded.module, original)


def test_state_dict_with_importable_arch_and_kwargs(tmp_path):
    original = nn.Linear(4, 2)
    torch.save(original.state_dict(), tmp_path / "linear.pth")
    loaded = _load(tmp_path, path="linear.pth", arch="torch.nn:Linear", kwargs={"in_features": 4, "out_features": 2},
                   input_shape=[1, 4])
    assert loaded.arch == "torch.nn:Linear" and loaded.arch_kwargs == {"in_features": 4, "out_features": 2}
    assert torch.equal(loaded.module.weight, original.weight)


def test_state_dict_without_arch_names_the_fix(tmp_path):
    torch.save(_tiny_sequential().state_dict(), tmp_path / "net.pt")
    with pytest.raises(InputError, match="model.arch is required to load a state_dict: set model.arch"):
        _load(tmp_path, path="net.pt", input_shape=SHAPE)


def test_state_dict_mismatch_names_the_keys(tmp_path, arch_file):
    state = _trained_tiny_net(arch_file).state_dict()
    torch.save(state, tmp_path / "net.pt")
    with pytest.raises(InputError, match=r"shape mismatch: conv\.weight file \(4, 1, 3, 3\) vs arch \(8, 1, 3, 3\)"):
        _load(tmp_path, path="net.pt", arch="archs.py:TinyNet", kwargs={"width": 8}, input_shape=SHAPE)
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "net.pt")
    with pytest.raises(InputError, match=r"missing keys: fc\.bias; unexpected keys: extra\.weight"):
        _load(tmp_path, path="net.pt", arch="archs.py:TinyNet", input_shape=SHAPE)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("no_such_package_xyz.models:Net", "cannot import 'no_such_package_xyz.models'"),
        ("archs.py:Missing", "no callable 'Missing' there; known: TinyNet"),
        ("missing.py:TinyNet", "model.arch file not found"),
        ("torch.nn:ReLU6", None),  # importable and callable, but the weights do not fit
        ("math:sqrt", "failed when called"),
    ],
)
def test_bad_arch_is_an_input_error(tmp_path, arch_file, arch, message):
    torch.save(_trained_tiny_net(arch_file).state_dict(), tmp_path / "net.pt")
    with pytest.raises(InputError, match=message or "unexpected keys"):
        _load(tmp_path, path="net.pt", arch=arch, input_shape=SHAPE)


def test_state_dict_needs_input_shape(tmp_path, arch_file):
    torch.save(_trained_tiny_net(arch_file).state_dict(), tmp_path / "net.pt")
    with pytest.raises(InputError, match="model.input_shape is required for state_dict models"):
        _load(tmp_path, path="net.pt", arch="archs.py:TinyNet")


def test_checkpoint_dict_with_state_dict_key_loads(tmp_path, arch_file):
    original = _trained_tiny_net(arch_file)
    torch.save({"epoch": 3, "state_dict": original.state_dict()}, tmp_path / "checkpoint.pt")
    loaded = _load(tmp_path, path="checkpoint.pt", arch="archs.py:TinyNet", input_shape=SHAPE)
    assert _outputs_match(loaded.module, original)


# --- pickle ----------------------------------------------------------------------------------


def test_pickled_module_is_refused_without_trust(tmp_path):
    torch.save(_tiny_sequential(), tmp_path / "net.pt")
    with pytest.raises(InputError) as raised:
        _load(tmp_path, path="net.pt", input_shape=SHAPE)
    message = str(raised.value)
    assert "pickled module" in message and "runs code" in message and "--trust-pickle" in message
    assert "\n" not in message


def test_pickled_module_loads_when_trusted(tmp_path):
    original = _tiny_sequential()
    torch.save(original, tmp_path / "net.pt")
    loaded = _load(tmp_path, trust_pickle=True, path="net.pt", input_shape=SHAPE)
    assert loaded.format == "pickle" and loaded.arch is None
    assert _outputs_match(loaded.module, original)


def test_trusted_pickle_of_a_non_module_is_refused(tmp_path):
    torch.save({"weights": [np.zeros(2)]}, tmp_path / "thing.pt")
    with pytest.raises(InputError, match="not a torch.nn.Module"):
        _load(tmp_path, trust_pickle=True, path="thing.pt", format="pickle", input_shape=SHAPE)


# --- unreadable and missing files ------------------------------------------------------------


@pytest.mark.parametrize("with_arch", [False, True])
def test_corrupt_and_truncated_files_are_input_errors(tmp_path, arch_file, with_arch):
    torch.save(_trained_tiny_net(arch_file).state_dict(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint" * 10)
    (tmp_path / "empty.pt").write_bytes(b"")
    arch = {"arch": "archs.py:TinyNet"} if with_arch else {}
    for name in ("truncated.pt", "garbage.pt", "empty.pt"):
        with pytest.raises(InputError, match=rf"cannot read model file .*{name}: .+; is it a PyTorch checkpoint\?$"):
            _load(tmp_path, path=name, input_shape=SHAPE, **arch)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="model file not found"):
        _load(tmp_path, path="nowhere.pt", input_shape=SHAPE)


def test_unknown_suffix_asks_for_the_format(tmp_path):
    (tmp_path / "model.weights").write_bytes(b"x")
    with pytest.raises(InputError, match="set model.format"):
        _load(tmp_path, path="model.weights", input_shape=SHAPE)


def test_corrupt_onnx_and_pt2_are_input_errors(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not onnx at all")
    (tmp_path / "bad.pt2").write_bytes(b"not a program")
    with pytest.raises(InputError, match="is not a valid ONNX model"):
        _load(tmp_path, path="bad.onnx")
    with pytest.raises(InputError, match="cannot read exported program"):
        _load(tmp_path, path="bad.pt2", input_shape=SHAPE)


# --- torch.export and ONNX -------------------------------------------------------------------


def test_exported_program_round_trips_and_knows_its_input_shape(tmp_path):
    original = _tiny_sequential()
    program = torch.export.export(original, (torch.randn(*SHAPE),))
    torch.export.save(program, tmp_path / "net.pt2")
    loaded = _load(tmp_path, path="net.pt2")
    assert loaded.format == "export" and loaded.input_shape == tuple(SHAPE)
    assert not loaded.module.training
    assert _outputs_match(loaded.module, original, batch=1)


def test_onnx_loads_with_shape_from_graph_and_agrees_with_torch(tmp_path):
    original = _tiny_sequential()
    export_onnx(original, torch.randn(*SHAPE), tmp_path / "net.onnx")
    loaded = _load(tmp_path, path="net.onnx")
    assert loaded.format == "onnx" and loaded.module is None
    assert loaded.onnx_path == (tmp_path / "net.onnx").resolve()
    assert loaded.input_shape == tuple(SHAPE)  # the dynamic batch dim reads as 1
    inputs = torch.randn(5, *SHAPE[1:])  # dynamic batch
    session = onnxruntime.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    (onnx_output,) = session.run(None, {"input": inputs.numpy()})
    np.testing.assert_allclose(onnx_output, original(inputs).detach().numpy(), atol=1e-4)


# --- saving ----------------------------------------------------------------------------------


def test_save_state_dict_writes_weights_plan_and_onnx_that_reload(tmp_path, arch_file):
    original = _trained_tiny_net(arch_file)
    torch.save(original.state_dict(), tmp_path / "net.pt")
    loaded = _load(tmp_path, path="net.pt", arch="archs.py:TinyNet", input_shape=SHAPE)
    out_dir = tmp_path / "out"
    written = save_model(loaded, loaded.module, out_dir=out_dir, example_input=torch.randn(*SHAPE), keep=None)
    names = {"model": "model.pt", "plan": "model.plan.json", "arch": "archs.py", "onnx": "model.onnx"}
    assert written == {key: out_dir / name for key, name in names.items()}
    assert _files(out_dir) == {"model.pt", "model.plan.json", "archs.py", "model.onnx"}  # no temporary files left
    plan = json.loads(written["plan"].read_text())
    assert plan["arch"] == "archs.py:TinyNet" and plan["input_shape"] == SHAPE and plan["keep"] == {}
    assert written["arch"].read_text() == arch_file.read_text()  # relative to the plan: the folder can move
    # The plan carries arch and input shape: the saved model reloads from another folder with neither given.
    reloaded = load_model(ModelSpec(path=written["model"]), base_dir=Path("/"), trust_pickle=False)
    assert reloaded.format == "state_dict" and reloaded.input_shape == tuple(SHAPE)
    assert _outputs_match(reloaded.module, original)


def test_saved_plan_replays_the_kept_channels(tmp_path, arch_file):
    from prunecli.surgery import apply_keep

    original = _trained_tiny_net(arch_file)
    torch.save(original.state_dict(), tmp_path / "net.pt")
    loaded = _load(tmp_path, path="net.pt", arch="archs.py:TinyNet", input_shape=SHAPE)
    kept = [0, 2, 3]  # conv output channels 0, 2, 3: conv, bn and the matching 64-wide blocks of fc
    fc_columns = [channel * 64 + offset for channel in kept for offset in range(64)]
    keep = {name: {0: kept} for name in ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                                          "bn.running_var")}
    keep["fc.weight"] = {1: fc_columns}
    apply_keep(loaded.module, keep)
    written = save_model(loaded, loaded.module, out_dir=tmp_path / "out", example_input=torch.randn(*SHAPE), keep=keep)
    plan = json.loads(written["plan"].read_text())
    assert plan["keep"]["conv.weight"] == {"0": kept}
    reloaded = load_model(ModelSpec(path=written["model"]), base_dir=tmp_path, trust_pickle=False)
    assert reloaded.module.conv.out_channels == 3 and reloaded.keep == keep
    assert _outputs_match(reloaded.module, loaded.module)


def test_moved_output_folder_loads_with_its_own_copy_of_the_arch(tmp_path, arch_file):
    original = _trained_tiny_net(arch_file)
    torch.save(original.state_dict(), tmp_path / "net.pt")
    loaded = _load(tmp_path, path="net.pt", arch="archs.py:TinyNet", input_shape=SHAPE)
    save_model(loaded, loaded.module, out_dir=tmp_path / "out", example_input=torch.randn(*SHAPE), keep=None)
    moved = (tmp_path / "out").rename(tmp_path / "elsewhere")
    arch_file.unlink()  # the copy in the folder is what loads
    reloaded = load_model(ModelSpec(path=moved / "model.pt"), base_dir=Path("/"), trust_pickle=False)
    assert reloaded.arch == f"{moved / 'archs.py'}:TinyNet"
    assert _outputs_match(reloaded.module, original)
    # Saving it again copies the arch on: from the moved folder into the next one.
    written = save_model(reloaded, reloaded.module, out_dir=tmp_path / "again", example_input=torch.randn(*SHAPE),
                         keep=None)
    assert json.loads(written["plan"].read_text())["arch"] == "archs.py:TinyNet" and written["arch"].is_file()


def test_plan_with_an_absolute_arch_path_still_loads(tmp_path, arch_file):
    original = _trained_tiny_net(arch_file)
    (tmp_path / "out").mkdir()
    torch.save(original.state_dict(), tmp_path / "out" / "model.pt")
    plan = {"version": 1, "arch": f"{arch_file.resolve()}:TinyNet", "kwargs": {}, "input_shape": SHAPE, "keep": {}}
    (tmp_path / "out" / "model.plan.json").write_text(json.dumps(plan))  # as written before arch files were copied
    reloaded = load_model(ModelSpec(path=tmp_path / "out" / "model.pt"), base_dir=Path("/"), trust_pickle=False)
    assert reloaded.arch == plan["arch"] and _outputs_match(reloaded.module, original)


def test_importable_arch_is_saved_as_it_is(tmp_path):
    torch.save(nn.Linear(4, 2).state_dict(), tmp_path / "linear.pt")
    loaded = _load(tmp_path, path="linear.pt", arch="torch.nn:Linear", kwargs={"in_features": 4, "out_features": 2},
                   input_shape=[1, 4])
    written = save_model(loaded, loaded.module, out_dir=tmp_path / "out", example_input=torch.randn(1, 4), keep=None)
    assert "arch" not in written and _files(tmp_path / "out") == {"model.pt", "model.plan.json", "model.onnx"}
    assert json.loads(written["plan"].read_text())["arch"] == "torch.nn:Linear"


def test_compose_keep_counts_second_indices_among_first_survivors():
    first = {"w": {0: [1, 3, 4]}, "b": {0: [0, 1]}}
    then = {"w": {0: [0, 2], 1: [5]}, "c": {1: [2]}}
    assert compose_keep(first, then) == {"w": {0: [1, 4], 1: [5]}, "b": {0: [0, 1]}, "c": {1: [2]}}


def test_save_pickle_and_export_formats_reload(tmp_path):
    original = _tiny_sequential()
    torch.save(original, tmp_path / "net.pt")
    pickled = _load(tmp_path, trust_pickle=True, path="net.pt", input_shape=SHAPE)
    written = save_model(pickled, pickled.module, out_dir=tmp_path / "p", example_input=torch.randn(*SHAPE), keep=None)
    assert written == {"model": tmp_path / "p" / "model.pt", "onnx": tmp_path / "p" / "model.onnx"}
    assert _outputs_match(_load(tmp_path, trust_pickle=True, path="p/model.pt", input_shape=SHAPE).module, original)

    torch.export.save(torch.export.export(original, (torch.randn(*SHAPE),)), tmp_path / "net.pt2")
    exported = _load(tmp_path, path="net.pt2")
    save_model(exported, exported.module, out_dir=tmp_path / "e", example_input=torch.randn(*SHAPE), keep=None)
    assert _files(tmp_path / "e") == {"model.pt2", "model.onnx"}
    reloaded = _load(tmp_path, path="e/model.pt2")
    assert _outputs_match(reloaded.module, original, batch=1)


def test_saved_export_has_a_dynamic_batch_when_the_model_allows(tmp_path, arch_file):
    original = _trained_tiny_net(arch_file)
    loaded = LoadedModel(format="export", source=tmp_path / "x.pt2", module=original, onnx_path=None, arch=None,
                         arch_kwargs={}, input_shape=tuple(SHAPE))
    written = save_model(loaded, original, out_dir=tmp_path, example_input=torch.randn(*SHAPE), keep=None)
    reloaded = torch.export.load(written["model"]).module()
    inputs = torch.randn(3, *SHAPE[1:])
    assert torch.allclose(reloaded(inputs), original(inputs), atol=1e-6)


def test_onnx_export_embeds_weights_and_agrees_with_torch(tmp_path, arch_file):
    original = _trained_tiny_net(arch_file)
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the legacy exporter's deprecation notices are silenced
        export_onnx(original, torch.randn(*SHAPE), path)
    assert _files(tmp_path) == {"archs.py", "net.onnx"}  # weights inside, no external data files
    model = onnx.load(str(path))
    assert all(tensor.data_location == onnx.TensorProto.DEFAULT for tensor in model.graph.initializer)
    assert [value.name for value in model.graph.input] == ["input"]
    inputs = torch.randn(4, *SHAPE[1:])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_output,) = session.run(None, {"input": inputs.numpy()})
    np.testing.assert_allclose(onnx_output, original(inputs).detach().numpy(), atol=1e-4)


def test_save_onnx_model_writes_the_proto(tmp_path):
    export_onnx(_tiny_sequential(), torch.randn(*SHAPE), tmp_path / "source.onnx")
    written = save_onnx_model(onnx.load(str(tmp_path / "source.onnx")), out_dir=tmp_path / "out")
    assert written == {"model": tmp_path / "out" / "model.onnx", "onnx": tmp_path / "out" / "model.onnx"}
    assert _files(tmp_path / "out") == {"model.onnx"}
    loaded = _load(tmp_path, path="out/model.onnx")
    with pytest.raises(InternalError, match="save_onnx_model"):
        save_model(loaded, _tiny_sequential(), out_dir=tmp_path / "x", example_input=torch.randn(*SHAPE), keep=None)


# --- atomic writes and outputs ---------------------------------------------------------------


def test_atomic_writes_replace_the_file_and_leave_no_temporaries(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second" and _files(tmp_path) == {"report.json"}
    with atomic_path(tmp_path / "model.onnx") as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".onnx" and temporary != tmp_path / "model.onnx"
        temporary.write_bytes(b"onnx")
    assert _files(tmp_path) == {"report.json", "model.onnx"}


def test_failed_atomic_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old" and _files(tmp_path) == {"model.pt"}


def test_first_tensor_finds_logits_in_tuples_and_dicts():
    logits = torch.ones(2, 3)
    assert first_tensor(logits) is logits
    assert first_tensor((logits, torch.zeros(1))) is logits
    assert first_tensor({"logits": logits, "aux": torch.zeros(1)}) is logits
    assert first_tensor([None, {"out": logits}]) is logits
    with pytest.raises(InputError, match="no tensor"):
        first_tensor({"a": None})
