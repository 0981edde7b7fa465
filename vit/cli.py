"""What the command-line entry points share."""

import argparse
import difflib
import sys

from weights.messages import first_line  # the one definition, at the bottom layer; the commands import it from here

__all__ = ["ArgumentParser", "positive_int", "port_number", "device_name", "pick_device", "first_line",
           "is_out_of_memory", "install_problem"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), not usage + error, and a
    mistyped flag is named with the closest real one before anything else is said."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        known = self.option_strings()
        for token in args:
            if token == "--":
                break
            flag = token.split("=", 1)[0]
            if flag.startswith("--") and not any(option.startswith(flag) for option in known):
                close = difflib.get_close_matches(flag, known, n=1)
                self.error(f"unrecognized argument {flag}" + (f"; did you mean {close[0]}?" if close else ""))
        return super().parse_known_args(args, namespace)

    def option_strings(self) -> list[str]:
        """Every --flag this parser or its subcommands take."""
        options = [option for option in self._option_string_actions if option.startswith("--")]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                options += [option for parser in action.choices.values() for option in parser.option_strings()]
        return options


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1. argparse turns the error into
    "argument --epochs: 0 is not a positive number" and exit status 2."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535)")
    return value


def device_name(text: str) -> str:
    """An argparse type for --device: auto, cpu, cuda or cuda:N, and a GPU only where there is
    one. One rule for every command: a device this machine cannot give is a usage error
    ("argument --device: ...", exit status 2), as a mistyped one is."""
    import re

    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"'{text}' is not auto, cpu, cuda or cuda:N")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"'{text}', but this machine has no CUDA GPU (use --device cpu)")
    return text


def is_out_of_memory(error: BaseException) -> bool:
    """GPU out-of-memory, or the CPU allocator's 'can't allocate memory'."""
    import torch

    text = str(error)
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def pick_device(name: str = "auto") -> "torch.device":
    """'auto' -> the GPU when there is one, else the CPU; 'cpu', 'cuda', 'cuda:1' as named."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: choose auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}, but no CUDA GPU is available (use --device cpu)")
    return device


def install_problem() -> str | None:
    """One line saying what is wrong with the installed torch and torchvision, or None. The usual
    case: a CPU build of torch from PyTorch's index beside a torchvision from PyPI, built for
    another torch, whose import fails with "operator torchvision::nms does not exist"."""
    import torch

    try:
        import torchvision
    except ImportError:
        return "torchvision is not installed: pip install torchvision (from the index torch came from)"
    except RuntimeError as error:  # its compiled operators do not load into this torch
        return (f"torchvision does not match torch {torch.__version__} ({first_line(error)}): install both from one "
                "index, e.g. pip install --force-reinstall torch torchvision --index-url "
                "https://download.pytorch.org/whl/cpu")
    return None
