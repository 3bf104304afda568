"""Errors whose message is written for the person using tokenstep, shown as is (never a traceback)."""


class TokenstepError(Exception):
    """Base class: the message says what went wrong and how to fix it."""


class LoadError(TokenstepError):
    """The model could not be found or loaded, or the device/dtype asked for is not available."""


class SettingsError(TokenstepError):
    """A strategy setting or option is out of range."""


class SessionError(TokenstepError):
    """A step, force, undo or reset the session cannot do (end of sequence, context limit, bad id...)."""


def said(error: Exception) -> str:
    """An error in one line for a person: our own errors say what to do; others are named."""
    return str(error) if isinstance(error, TokenstepError) else f"{type(error).__name__}: {error}"
