"""User-facing errors. The CLI prints these as one line and exits 2; anything else is a bug."""


class E2LLMError(Exception):
    """Bad input or environment that the user can fix; the message says how."""


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
