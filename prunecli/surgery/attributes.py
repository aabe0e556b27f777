"""Module attributes that must follow their tensors' new shapes after slicing, per module type."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from prunecli.registry import Registry

Fixer = Callable[[nn.Module], None]
_FIXERS: Registry[type[nn.Module], Fixer] = Registry("attribute fixer")
fixer = _FIXERS.register  # @fixer(nn.Linear): updates a module type's shape attributes


def fix_attributes(module: nn.Module) -> None:
    """Update the shape attributes of ``module`` (one module, not its children) from its tensors."""
    for module_type in type(module).__mro__:
        if module_type in _FIXERS:
            _FIXERS.lookup(module_type)(module)
            return


@fixer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(module: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> None:
    depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
    module.out_channels = module.weight.shape[0]
    if depthwise:
        module.groups = module.out_channels
    module.in_channels = module.weight.shape[1] * module.groups


@fixer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(module: nn.ConvTranspose2d) -> None:
    module.in_channels = module.weight.shape[0]
    module.out_channels = module.weight.shape[1] * module.groups


@fixer(nn.Linear)
def _linear(module: nn.Linear) -> None:
    module.out_features, module.in_features = module.weight.shape


@fixer(nn.Bilinear)
def _bilinear(module: nn.Bilinear) -> None:
    module.out_features, module.in1_features, module.in2_features = module.weight.shape


@fixer(nn.modules.batchnorm._NormBase)
def _norm(module: nn.modules.batchnorm._NormBase) -> None:
    source = module.weight if module.weight is not None else module.running_mean
    if source is not None:
        module.num_features = source.shape[0]


@fixer(nn.Embedding)
def _embedding(module: nn.Embedding) -> None:
    module.num_embeddings, module.embedding_dim = module.weight.shape


@fixer(nn.LayerNorm, nn.RMSNorm)
def _layer_norm(module: nn.LayerNorm | nn.RMSNorm) -> None:
    if module.weight is not None and len(module.normalized_shape) == 1:
        module.normalized_shape = tuple(module.weight.shape)


@fixer(nn.GroupNorm)
def _group_norm(module: nn.GroupNorm) -> None:
    if module.weight is not None:
        module.num_channels = module.weight.shape[0]
