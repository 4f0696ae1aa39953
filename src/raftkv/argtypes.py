"""Command-line helpers shared by the benchmarks."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def bounded_int(name: str, lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an int (underscores allowed) in lo..hi, or a clear error."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be in {lo}..{hi}, got {value}")
        return value

    parse.__name__ = name  # argparse names the type in its error messages
    return parse
