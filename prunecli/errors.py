"""The one error hierarchy. The CLI boundary maps each class to an exit code and one line.

Exit codes: 0 success, 1 a gate failed, 2 bad input or a model the tool cannot prune,
3 internal error (a bug; the traceback is kept).
"""


class PruneCliError(Exception):
    """Base of every error prunecli raises on purpose. Its message is one line that names the fix."""

    exit_code = 3


class InputError(PruneCliError):
    """Bad user input: config, files, data shapes, unsupported model or option. Exit code 2."""

    exit_code = 2


class UnsupportedModelError(InputError):
    """The model cannot be loaded, traced or pruned as asked. Exit code 2."""


class OnnxExportError(UnsupportedModelError):
    """Neither ONNX exporter could export the model. Runs go on without the ONNX outputs; exit code 2 elsewhere."""


class InternalError(PruneCliError):
    """A bug in prunecli, e.g. a surgery whose output does not match the masked original. Exit code 3."""

    exit_code = 3


class VerificationError(InternalError):
    """Pruned outputs differ from the masked original beyond tolerance."""


class DistributedMismatchError(InternalError):
    """The ranks of a torchrun run disagree (their pruned structures differ). Exit code 3."""


class RankFailedError(PruneCliError):
    """On a torchrun rank other than 0: rank 0 failed; this rank exits with rank 0's exit code."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"rank 0 failed with exit code {exit_code}; its error is above")
        self.exit_code = exit_code
