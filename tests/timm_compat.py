"""Import timm offline on this project's CPU torch (for the zoo tests and benches).

torchvision 0.28 (needed by timm) is a CUDA build; on the CPU torch its import fails with
"operator torchvision::nms does not exist" because the CPU torch lacks the schemas of its two
C++ ops. Defining those two schemas first lets torchvision (and so timm) import. The shim lives in
``prunecli.batch.timm_source`` (``prunecli batch`` builds ``timm:NAME`` models with it); prunecli
never imports torchvision or timm unless a ``timm:`` model is asked for.
"""

from __future__ import annotations

from prunecli.batch.timm_source import define_torchvision_op_schemas, import_timm

__all__ = ["define_torchvision_op_schemas", "import_timm"]
