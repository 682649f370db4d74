"""Errors that carry the name of the offending field, so the CLI can print one clear line."""


class SpecError(ValueError):
    """A value outside its allowed range.

    ``field`` is the spec field (or CLI option) at fault, ``allowed`` says what would be accepted,
    ``got`` is what was given. ``str(err)`` is one line: ``"<field>: must be <allowed> (got <got>)"``.
    """

    def __init__(self, field: str, allowed: str, got=None):
        self.field = field
        self.allowed = allowed
        self.got = got
        msg = f"{field}: must be {allowed}"
        if got is not None:
            msg += f" (got {got!r})"
        super().__init__(msg)


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine (e.g. ``triton`` without a CUDA GPU)."""


class UnsupportedShape(ValueError):
    """No kernel path supports this model shape; the message names the limit."""


class TrainingDiverged(RuntimeError):
    """Every instance of a job diverged (NaN/inf): there is nothing to analyse. One-line message."""


class TrainingFailed(RuntimeError):
    """Training failed somewhere the user cannot see (a Ray task): the message is one line."""
