"""What the command-line entry points share."""

import argparse


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), not usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def first_line(error: BaseException) -> str:
    """An exception as one short line for an error message: its first line, or its type's name
    when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def is_out_of_memory(error: BaseException) -> bool:
    """GPU out-of-memory, or the CPU allocator's 'can't allocate memory'."""
    import torch

    text = str(error)
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))
