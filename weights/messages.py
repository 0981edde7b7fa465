"""Error messages as the commands print them: one line each."""


def first_line(error: BaseException) -> str:
    """An exception as one short line for an error message: its first line, or its type's name
    when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
