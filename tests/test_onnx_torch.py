"""The ONNX-in-torch executor (prunecli.onnx_torch): equal to ONNX Runtime, trainable, written back; on a run:
data-driven criteria and fine-tuning on an ONNX input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import spearmanr

from prunecli.criteria.inputs import ScoringInputs
from prunecli.criteria.registry import get_criterion
from prunecli.data.dataset import make_split
from prunecli.errors import InputError
from prunecli.graph.trace import build_channel_graph
from prunecli.onnx_graph.build import build_onnx_graph
from prunecli.onnx_torch import OnnxModule, write_back
from tests.conftest import CONFIGS, SAMPLES, load_sample
from tests.test_end_to_end import FAST, cli

INPUTS = np.load(SAMPLES / "digits_val.npz")["inputs"][:64]
TRAIN = np.load(SAMPLES / "digits_train.npz")


def _runtime(model: onnx.ModelProto, *feeds: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {value.name: feed for value, feed in zip(session.get_inputs(), feeds)})


def _torch(model: onnx.ModelProto, *feeds: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = OnnxModule(model).eval()(*(torch.from_numpy(feed) for feed in feeds))
    return [t.numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_executor_equals_onnx_runtime_on_the_sample_models(name: str) -> None:
    model = onnx.load(str(SAMPLES / f"digits_{name}.onnx"))
    np.testing.assert_allclose(_torch(model, INPUTS)[0], _runtime(model, INPUTS)[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("architecture", "exporter"),
    [("test_vit", "torchscript"), ("test_convnext", "torchscript"), ("test_efficientnet", "torchscript"),
     ("test_efficientnet", "dynamo")],
)  # fmt: skip
def test_executor_equals_onnx_runtime_on_timm_exports(architecture: str, exporter: str, timm_module) -> None:
    model = timm_module.create_model(architecture, pretrained=False, num_classes=10).eval()
    side = 160 if "vit" in architecture else 64
    example = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    proto = _export(model, example, dynamo=exporter == "dynamo")
    assert proto.opset_import[0].version == (18 if exporter == "dynamo" else 17)
    np.testing.assert_allclose(_torch(proto, example.numpy())[0], _runtime(proto, example.numpy())[0], atol=1e-4)


def _export(model: torch.nn.Module, example: torch.Tensor, *, dynamo: bool) -> onnx.ModelProto:
    if dynamo:
        batch = torch.export.Dim("batch")
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=18, dynamic_shapes=({0: batch},),
                                    verbose=False)  # fmt: skip
        return program.model_proto
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


def _graph(nodes: list, inputs: list, outputs: list, initializers: list, *, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _value(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.mark.parametrize("opset", [11, 18])
def test_attribute_and_input_forms_of_axes_by_opset(opset: int) -> None:
    """Split, Squeeze, Unsqueeze and ReduceMean take axes as attributes before opset 13/18, as inputs after."""
    as_input = {"split": opset >= 13, "squeeze": opset >= 13, "reduce": opset >= 18}
    consts = [numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in
              [("sizes", [2, 4]), ("axes0", [0]), ("axes1", [1])]]  # fmt: skip

    def node(op: str, inputs: list, outputs: list, axes_input: str, kind: str, **attributes):
        if as_input[kind]:
            return helper.make_node(op, inputs + [axes_input], outputs, **attributes)
        key = {"split": "split"}.get(kind, "axes")
        value = numpy_helper.to_array(next(c for c in consts if c.name == axes_input)).tolist()
        return helper.make_node(op, inputs, outputs, **{key: value}, **attributes)

    nodes = [
        node("Split", ["x"], ["a", "b"], "sizes", "split", axis=1),
        node("ReduceMean", ["b"], ["m"], "axes1", "reduce", keepdims=1),  # (3, 1, 5)
        node("Unsqueeze", ["m"], ["u"], "axes0", "squeeze"),
        node("Squeeze", ["u"], ["s"], "axes0", "squeeze"),
        helper.make_node("Mul", ["a", "s"], ["y"]),
    ]
    model = _graph(nodes, [_value("x", [3, 6, 5])], [_value("y", None)], consts, opset=opset)
    x = np.random.default_rng(0).normal(size=(3, 6, 5)).astype(np.float32)
    np.testing.assert_allclose(_torch(model, x)[0], _runtime(model, x)[0], atol=1e-6)


def _conv_bn_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    arrays = {
        "block.conv.weight": rng.normal(size=(4, 2, 3, 3)), "bn.scale": rng.uniform(0.5, 1.5, 4),
        "bn.bias": rng.normal(size=4), "bn.mean": rng.normal(size=4), "bn.var": rng.uniform(0.5, 2, 4),
    }  # fmt: skip
    initializers = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    nodes = [
        helper.make_node("Conv", ["x", "block.conv.weight"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["y"]),
    ]
    return _graph(nodes, [_value("x", ["n", 2, 5, 5])], [_value("y", None)], initializers, opset=17)


def test_parameters_are_named_as_initializers_and_batchnorm_statistics_are_buffers() -> None:
    model = _conv_bn_model()
    module = OnnxModule(model)
    assert sorted(name for name, _ in module.named_parameters()) == ["block.conv.weight", "bn.bias", "bn.scale"]
    assert sorted(name for name, _ in module.named_buffers()) == ["bn.mean", "bn.var"]
    assert isinstance(module.get_submodule("block.conv"), torch.nn.Module)  # holders along the dots
    x = np.random.default_rng(1).normal(size=(8, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_torch(model, x)[0], _runtime(model, x)[0], atol=1e-5)
    reference = torch.nn.BatchNorm2d(4, momentum=0.1)  # ONNX momentum 0.9 = torch 0.1
    reference.running_mean.copy_(module.get_buffer("bn.mean"))
    reference.running_var.copy_(module.get_buffer("bn.var"))
    reference.train()(torch.nn.functional.conv2d(torch.from_numpy(x), module.get_parameter("block.conv.weight"),
                                                 padding=1).detach())  # fmt: skip
    module.train()(torch.from_numpy(x))
    torch.testing.assert_close(module.get_buffer("bn.mean"), reference.running_mean)
    torch.testing.assert_close(module.get_buffer("bn.var"), reference.running_var)


def test_bn_scale_and_l1_bn_read_the_scales_of_unfused_batchnorm_nodes() -> None:
    from prunecli.regularize.penalties import make_penalty

    model = _conv_bn_model()
    consumer = numpy_helper.from_array(np.ones((3, 4, 1, 1), dtype=np.float32), "head.weight")
    model.graph.initializer.append(consumer)
    model.graph.node.extend([helper.make_node("Relu", ["y"], ["r"]), helper.make_node("Conv", ["r", "head.weight"],
                                                                                      ["z"])])  # fmt: skip
    model.graph.output[0].name = "z"
    module, graph = OnnxModule(model), build_onnx_graph(model, input_shape=(1, 2, 5, 5))
    (group,) = graph.prunable_groups
    scores = get_criterion("bn_scale")(ScoringInputs(graph=graph, module=module))
    scale = np.abs(numpy_helper.to_array(model.graph.initializer[1]))
    np.testing.assert_allclose(scores[group.id], scale, rtol=1e-6)
    np.testing.assert_allclose(make_penalty("l1_bn", module, graph=None).distribution(), scale, rtol=1e-6)


def test_write_back_keeps_the_graph_and_writes_trained_values() -> None:
    model = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    module = OnnxModule(model)
    assert write_back(model, module).SerializeToString() == model.SerializeToString()  # untrained: byte for byte
    with torch.no_grad():
        module.get_parameter("fc.bias").add_(1.0)
    written = write_back(model, module)
    assert [t.name for t in written.graph.initializer] == [t.name for t in model.graph.initializer]
    changed = {t.name for t, o in zip(written.graph.initializer, model.graph.initializer)
               if not np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(o))}  # fmt: skip
    assert changed == {"fc.bias"} and written.graph.node == model.graph.node
    np.testing.assert_allclose(_runtime(written, INPUTS)[0], _runtime(model, INPUTS)[0] + 1.0, atol=1e-5)


def test_an_op_without_an_implementation_is_one_input_error() -> None:
    nodes = [helper.make_node("Det", ["x"], ["y"])]
    model = _graph(nodes, [_value("x", [2, 3, 3])], [_value("y", None)], [], opset=17)
    with pytest.raises(InputError, match=r"^finetune on ONNX runs the graph in torch; op Det is not supported yet"):
        OnnxModule(model, purpose="finetune")


def _criterion_scores(name: str, sample: str) -> tuple[dict, dict]:
    """``name``'s scores on the torch sample model and on its ONNX export, by group name, same seed and batches."""
    split = make_split(TRAIN["inputs"], TRAIN["labels"], source="digits_train.npz")
    torch_model = load_sample(sample)
    torch_graph = build_channel_graph(torch_model, torch.from_numpy(INPUTS[:8]))
    proto = onnx.load(str(SAMPLES / f"digits_{sample}.onnx"))
    onnx_graph = build_onnx_graph(proto, input_shape=(1, 1, 8, 8))
    scores = []
    for graph, module in ((torch_graph, torch_model), (onnx_graph, OnnxModule(proto).eval())):
        found = get_criterion(name)(ScoringInputs(graph=graph, module=module, split=split, batch_count=3))
        scores.append({graph.group(group_id).name: values for group_id, values in found.items()})
    return scores[0], scores[1]


@pytest.mark.parametrize(
    ("criterion", "sample"),
    [("activation", "cnn"), ("apoz", "cnn"), ("taylor", "cnn"), ("weight_activation", "cnn"), ("gradient", "mlp")],
)
def test_data_driven_criteria_on_onnx_rank_channels_as_on_torch(criterion: str, sample: str) -> None:
    """The sample .onnx files are exports of the .pt ones. The CNN's export folds BatchNorm into its convs, which
    rescales weight gradients per channel, so ``gradient`` (|dL/dw|) is compared on the MLP, which has no norm."""
    on_torch, on_onnx = _criterion_scores(criterion, sample)
    assert set(on_onnx) == set(on_torch) and len(on_onnx) == (5 if sample == "cnn" else 2)
    for group, values in on_torch.items():
        assert spearmanr(values, on_onnx[group])[0] > 0.9, group
    if criterion in ("activation", "taylor"):  # observed at the same place: the same numbers
        for group, values in on_torch.items():
            np.testing.assert_allclose(on_onnx[group], values, rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx_finetune")
    result = cli("run", CONFIGS / "digits_cnn_onnx_taylor_finetune.yaml", "-o", out, "--json", *FAST)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_taylor_prune_and_distilled_finetune_on_onnx_recover_accuracy(finetuned_run) -> None:
    _, report = finetuned_run
    assert report["stages"] == ["original", "pruned", "finetuned", "evaluated"]
    assert report["scoring"][0]["criterion"] == "taylor" and report["scoring"][0]["groups_scored"] == 5
    original, pruned, finetuned = (report[stage] for stage in ("original", "pruned", "finetuned"))
    assert finetuned["accuracy"] > pruned["accuracy"] + 0.2  # 0.55 -> 0.97 on the sample
    assert finetuned["accuracy"] >= original["accuracy"] - 0.03
    assert finetuned["macs"] == pruned["macs"] < 0.3 * original["macs"]


def test_finetuned_onnx_model_reloads_with_the_inputs_names_and_opsets(finetuned_run) -> None:
    out, report = finetuned_run
    written, source = onnx.load(str(out / "model.onnx")), onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    onnx.checker.check_model(written, full_check=True)
    assert [v.name for v in written.graph.input] == [v.name for v in source.graph.input]
    assert [v.name for v in written.graph.output] == [v.name for v in source.graph.output]
    assert list(written.opset_import) == list(source.opset_import)
    assert [n.name for n in written.graph.node] == [n.name for n in source.graph.node]
    labels = np.load(SAMPLES / "digits_val.npz")["labels"][:64]
    accuracy = float((_runtime(written, INPUTS)[0].argmax(1) == labels).mean())
    assert accuracy > 0.9 and report["finetuned"]["latency_ms"]["backend"] == "onnxruntime"


def test_regularize_with_group_lasso_on_onnx(tmp_path: Path) -> None:
    step = "steps.3={kind: regularize, penalty: group_lasso, strength: 1.0e-3, epochs: 1}"
    result = cli("run", CONFIGS / "digits_cnn_onnx_taylor_finetune.yaml", "-o", tmp_path, "--json", *FAST,
                 "--set", step, "--set", "steps.1.ratio=0.25")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stages"] == ["original", "pruned", "regularized", "evaluated"]
    (entry,) = report["regularization"]["steps"]
    assert entry["penalty"] == "group_lasso" and entry["after"]["penalty"] < entry["before"]["penalty"]
    assert report["regularized"]["accuracy"] > report["pruned"]["accuracy"]


def test_a_module_that_disagrees_with_onnx_runtime_is_a_verification_error() -> None:
    from prunecli.errors import VerificationError
    from prunecli.onnx_torch.stage import check_against_runtime

    model = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    module = OnnxModule(model).eval()
    assert check_against_runtime(model, module, torch.from_numpy(INPUTS[:8])) < 1e-4
    with torch.no_grad():
        module.get_parameter("fc.weight").mul_(2.0)
    with pytest.raises(VerificationError, match="differs from ONNX Runtime"):
        check_against_runtime(model, module, torch.from_numpy(INPUTS[:8]))


def test_a_run_needing_an_unsupported_op_is_refused_before_any_work(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.zeros((10, 64), dtype=np.float32), "fc.weight")
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], transB=1),
             helper.make_node("Hardmax", ["logits"], ["output"])]  # fmt: skip
    model = _graph(nodes, [_value("input", ["n", 1, 8, 8])], [_value("output", ["n", 10])], [weight], opset=17)
    onnx.save_model(model, str(tmp_path / "hardmax.onnx"))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        f"version: 1\nmodel: {{path: {tmp_path / 'hardmax.onnx'}}}\n"
        f"data: {{format: npz, train: {SAMPLES / 'digits_train.npz'}, eval: {SAMPLES / 'digits_val.npz'}}}\n"
        "steps:\n  - {kind: score, criterion: l2}\n  - {kind: select, ratio: 0.5}\n  - {kind: prune}\n"
        "  - {kind: finetune, epochs: 1}\n"
    )
    result = cli("run", pipeline, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "finetune on ONNX runs the graph in torch; op Hardmax is not supported yet" in lines[0]
    assert not (tmp_path / "out").exists()
