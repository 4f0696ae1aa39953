"""argparse types shared by the command line and the benchmarks."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def bounded_int(name: str, lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int (underscores allowed) >= lo and, if given, <= hi."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"{name} must be {bound}, got {value}")
        return value

    parse.__name__ = name  # argparse names the type in its error messages
    return parse
