"""User-facing errors. The CLI prints these as one line and exits 2; anything else is a bug."""


class E2LLMError(Exception):
    """Bad input or environment that the user can fix; the message says how.

    The message speaks the Python interface (arguments, ``overflow='truncate'``). Where the
    command line's words differ (flags, ``--overflow truncate``; no mention of settings that
    have no flag), the raiser also passes ``cli=``: the CLI prints that one (:meth:`for_cli`).
    """

    def __init__(self, message: str = "", *, cli: str | None = None):
        super().__init__(message)
        self.cli = cli

    def for_cli(self) -> str:
        return self.cli or str(self)


class ConfigError(E2LLMError, ValueError):
    pass


class InputError(E2LLMError, ValueError):
    pass


class ContextTooLongError(InputError):
    pass


class CheckpointError(E2LLMError):
    pass


class ModelNotFoundError(E2LLMError):
    pass


class TrainingError(E2LLMError):
    pass


class DeviceError(E2LLMError, ValueError):
    """A device that is not there, or a dtype / attention kernel the device cannot run."""


def check_documents(texts: list) -> None:
    """Every document a non-blank str, checked before any model runs (the engine and the
    plugins share this, so a bad document reads the same wherever it came in)."""
    if not texts:
        raise InputError("the context has no documents; pass at least one non-empty text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"document {i} is a {type(text).__name__}, expected text (str)")
        if not text.strip():
            where = "the context" if len(texts) == 1 else f"document {i} of {len(texts)}"
            raise InputError(f"{where} is empty or whitespace only; pass the text to read (or leave the empty document out)")
