"""Is a re-run the same model? Compares two checkpoints' weights and, where both runs wrote one, their held-out
learning curves (`learning_curve.json` beside each checkpoint directory).

    python -m tools.compare_checkpoints outputs/demo/pretrain/checkpoint /tmp/rerun/checkpoint

Prints the largest absolute weight difference over all tensors and whether the curves are identical; exits 1 if
the tensor names or shapes differ.
"""

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file


def max_weight_difference(first: Path, second: Path) -> float:
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise SystemExit(f"{first} and {second} hold different tensors")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def same_curves(first: Path, second: Path) -> bool | None:
    paths = [path.parent / "learning_curve.json" for path in (first, second)]
    if not all(path.exists() for path in paths):
        return None
    return json.loads(paths[0].read_text()) == json.loads(paths[1].read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    print(f"max |weight difference|: {max_weight_difference(args.first, args.second):.3g}")
    print(f"held-out learning curves identical: {same_curves(args.first, args.second)}")


if __name__ == "__main__":
    sys.exit(main())
