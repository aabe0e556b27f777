"""finetune, regularize and data-driven scoring on an ONNX input, through ``OnnxModule``.

On an ONNX input the current model is a file (``state.loaded.onnx_path``). A training step runs
that graph as an ``OnnxModule``, checks it against ONNX Runtime on the run's sample batch, trains
it with the torch loop (distilling from the ORIGINAL input graph when asked), writes the trained
values back into the same graph and makes the result the current model::

    finetune_onnx_stage(state, FinetuneStep(kind="finetune", epochs=2, distill={...}))
    state.loaded.onnx_path          # .../prunecli-onnx-XXXX/model2.onnx: the pruned graph, trained
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import onnx
import torch

from prunecli.criteria.registry import DATA_DRIVEN
from prunecli.errors import InputError, VerificationError
from prunecli.onnx_torch.module import NORM_OPS, OnnxModule, check_runnable, write_back

if TYPE_CHECKING:
    from prunecli.config.schema import FinetuneStep, Pipeline, RegularizeStep
    from prunecli.pipeline.state import RunState

Trained = TypeVar("Trained")
NEEDS_MODULE = DATA_DRIVEN | {"bn_scale"}  # criteria that read an OnnxModule (bn_scale: its norm_scales)
EXECUTOR_TOLERANCE = 1e-4  # max |torch - ONNX Runtime| on the sample batch, relative to the outputs' scale


def train_onnx(state: RunState, *, purpose: str, train: Callable[[OnnxModule, OnnxModule | None], Trained],
               distill: bool) -> Trained:  # fmt: skip
    """Run ``train(module, teacher)`` on the current ONNX file as a torch module; make the trained graph current.

    ``teacher`` is the run's input graph (the unpruned original) when ``distill``, else None.
    """
    from prunecli.onnx_graph.pipeline import current_model, replace_current_model

    model = current_model(state)
    module = torch_module(state, model, purpose=purpose)
    teacher = None
    if distill:
        original = onnx.load(str(state.snapshots.get("original", state.loaded.onnx_path)))
        teacher = OnnxModule(original, purpose=purpose).to(state.device).eval()
    result = train(module, teacher)
    replace_current_model(state, write_back(model, module.cpu()))
    return result


def torch_module(state: RunState, model: onnx.ModelProto, *, purpose: str) -> OnnxModule:
    """``model`` as an ``OnnxModule`` in eval mode on the run's device, checked against ONNX Runtime."""
    module = OnnxModule(model, purpose=purpose).eval()
    check_against_runtime(model, module, state.sample.detach().cpu())
    return module.to(state.device)


def check_against_runtime(model: onnx.ModelProto, module: OnnxModule, sample: torch.Tensor) -> float:
    """The max abs difference of ``module`` and ONNX Runtime on ``sample``; a VerificationError beyond tolerance."""
    from prunecli.model_io.onnx_file import graph_input
    from prunecli.onnx_graph.verify import run_model

    expected = run_model(model, {graph_input(model).name: sample.numpy()})[0]
    with torch.no_grad():
        outputs = module(sample)
    actual = (outputs[0] if isinstance(outputs, tuple) else outputs).numpy()
    difference = float(np.abs(actual - expected).max()) if expected.size else 0.0
    if not difference <= EXECUTOR_TOLERANCE * max(1.0, float(np.abs(expected).max(initial=0.0))):
        raise VerificationError(
            f"the ONNX graph run in torch differs from ONNX Runtime by {difference:.3g} on the sample batch; this is a "
            "prunecli bug: please report it with --debug output (static criteria, select, prune and evaluate work)"
        )
    return difference


def finetune_onnx_stage(state: RunState, step: FinetuneStep) -> None:
    """The finetune step on an ONNX input: train the current graph in torch, write it back, measure ``finetuned``."""
    from prunecli.finetune import finetune
    from prunecli.pipeline.measure import measure_stage

    def train(module: OnnxModule, teacher: OnnxModule | None) -> list[float]:
        return finetune(
            module, train=state.data.train, step=step, batch_size=state.pipeline.data.batch_size,
            device=state.device, seed=state.seed, teacher=teacher, progress=state.options.progress,
            masks=state.sparsity.masks if state.sparsity else None,
        )  # fmt: skip

    with state.timed("finetune"):
        train_onnx(state, purpose="finetune", train=train, distill=step.distill is not None)
    measure_stage(state, "finetuned")


def regularize_onnx_stage(state: RunState, step: RegularizeStep) -> None:
    """The regularize step on an ONNX input: the penalties read parameters by initializer name, as on torch."""
    from prunecli.onnx_graph.build import build_onnx_graph
    from prunecli.onnx_graph.pipeline import current_model
    from prunecli.regularize.stage import STAGE, train_with_penalty

    graph = None
    if step.penalty == "group_lasso":
        same = state.graph is not None and state.onnx_graph_of == state.loaded.onnx_path
        graph = state.graph if same else build_onnx_graph(current_model(state), input_shape=state.loaded.input_shape)

    def train(module: OnnxModule, teacher: OnnxModule | None) -> dict[str, Any]:
        return train_with_penalty(state, step, module, graph=graph, teacher=teacher)

    with state.timed("regularize"):
        entry = train_onnx(state, purpose="regularize", train=train, distill=step.distill is not None)
    state.regularization.append(entry)
    from prunecli.pipeline.measure import measure_stage

    measure_stage(state, STAGE)


def scoring_sources(state: RunState, criterion: str | Mapping[str, float]) -> tuple[dict[str, Any], OnnxModule | None]:
    """What criteria read on an ONNX input: the initializers by name, and a torch module of the graph if a
    criterion runs data through it (activation, apoz, taylor, gradient, weight_activation) or reads norm scales."""
    from prunecli.onnx_graph import initializer_arrays
    from prunecli.onnx_graph.pipeline import ensure_onnx_graph

    model = ensure_onnx_graph(state)
    runs = [name for name in _names(criterion) if name in NEEDS_MODULE]
    module = torch_module(state, model, purpose=f"criterion {runs[0]}") if runs else None
    return initializer_arrays(model), module


def check_onnx_executable(pipeline: Pipeline, *, onnx_path: Path) -> None:
    """Before any work: refuse, naming the op, a graph the executor cannot run when a step needs to run it, and
    bn_scale or l1_bn on a graph without normalisation scales."""
    users = _torch_users(pipeline)
    if not users:
        return
    model = onnx.load(str(onnx_path), load_external_data=False)
    check_runnable(model, purpose=users[0][1])
    initializers = {tensor.name for tensor in model.graph.initializer}
    scales = [node.input[1] for node in model.graph.node if node.op_type in NORM_OPS and len(node.input) > 1]
    for where, what in users:
        if what in ("criterion bn_scale", "penalty l1_bn") and not initializers.intersection(scales):
            instead = "another criterion such as l2" if what.startswith("criterion") else "penalty group_lasso or l1"
            raise InputError(
                f"{where}: {what} reads the scales of normalisation nodes and this ONNX graph has none (exporters "
                f"fold BatchNorm into the convs); use {instead}"
            )


def _torch_users(pipeline: Pipeline) -> list[tuple[str, str]]:
    """(where, what) of each step that runs the ONNX graph in torch: ``("steps.3", "finetune")``, ..."""
    users = []
    for where, step in pipeline.steps_with_paths():
        if step.kind == "regularize":
            users.append((where, "penalty l1_bn" if step.penalty == "l1_bn" else "regularize"))
        elif step.kind == "finetune":
            users.append((where, "finetune"))
        elif step.kind == "sparsify" and step.method == "movement":
            users.append((where, "sparsify method: movement"))
        elif step.kind == "score":
            users += [(where, f"criterion {name}") for name in _names(step.criterion_spec) if name in NEEDS_MODULE]
    return users


def _names(criterion: str | Mapping[str, float]) -> list[str]:
    return [criterion] if isinstance(criterion, str) else list(criterion)
