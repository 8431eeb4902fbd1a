"""The one exception type the CLI turns into a single clear line (no traceback)."""


class PtuningError(Exception):
    """A user-facing error: the message says what is wrong and what to do about it."""


def one_line(exc: BaseException) -> str:
    """'Type: first line of the message' (just 'Type' without a message): another library's error inside ours."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
