"""Argparse types the scripts share (eval.py, tools/): scripts import no other script, so a check two of them need
lives here once."""

import argparse


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


__all__ = ["whole_number"]
