"""The handle every step works on: a loaded model and what is needed to save it back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

LoadedFormat = Literal["state_dict", "pickle", "export", "onnx"]


@dataclass
class LoadedModel:
    """A model read from disk, with the facts needed to measure it and write it back.

    ``format`` is what the file turned out to be; the pruned model is saved in the same
    format (plus ONNX). Torch formats carry ``module`` (in eval mode); ONNX carries
    ``onnx_path`` and no module. For a state_dict, ``arch`` is the callable that built the
    module with any file path made absolute, so that a saved ``plan.json`` replays from
    anywhere. ``keep`` is the channel plan already applied at load time (from a sibling
    ``<stem>.plan.json``): tensor name -> dim -> kept indices, relative to the unpruned arch;
    ``attributes`` the module attribute values that plan set; ``modules`` the modules it replaced
    (``prune_blocks``: path -> ``"identity"`` or ``"zero"``).

    Example: ``digits_cnn.pt`` + ``model.arch: archs.py:DigitsCNN`` loads as::

        LoadedModel(format="state_dict", source=Path("/abs/digits_cnn.pt"), module=DigitsCNN(...),
                    onnx_path=None, arch="/abs/archs.py:DigitsCNN", arch_kwargs={},
                    input_shape=(1, 1, 8, 8))
    """

    format: LoadedFormat
    source: Path
    module: torch.nn.Module | None
    onnx_path: Path | None
    arch: str | None
    arch_kwargs: dict
    input_shape: tuple[int, ...]
    keep: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    attributes: dict[str, dict[str, int]] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
