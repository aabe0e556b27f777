"""Surgery: physically remove channels from a torch module, and check the result against masking."""

from prunecli.surgery.torch_surgery import apply_keep

__all__ = ["apply_keep"]
