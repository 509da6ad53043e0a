"""Argparse types the scripts share (eval.py, tools/): scripts import no other script, so a check two of them need
lives here once."""

import argparse
import math


def whole_number(minimum: int = 0):
    """An argparse type: an integer of at least `minimum` (a count of pages, questions or heatmaps), refused with the
    text it was given otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number {minimum} or more, not {text!r}")
        return value
    return parse


def is_positive_finite(value: float) -> bool:
    """The one test for a weight or scale that must be a positive finite number (a training argument or a script's
    flag for it)."""
    return math.isfinite(value) and value > 0


def positive_number(text: str) -> float:
    """An argparse type: a positive finite float, refused with the text it was given otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not is_positive_finite(value):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, not {text!r}")
    return value


__all__ = ["is_positive_finite", "positive_number", "whole_number"]
