"""Render a training YAML's synthetic pages into the datasets cache before the runs that read them, in parallel.

    python -m tools.prepare_data configs/demo/phase1.yaml init_from=pretrained/demo-base --num-proc 2

Rows are a pure function of the data keys (modeling_arrcoc/data/synthetic.py), so every run with the same keys then
reads them back from the cache instead of rendering them itself. `make demo` runs it once before its trainings,
which would otherwise each render the same 8256 pages on one core at the same moment.
"""

import argparse
import time

from transformers import AutoConfig

import modeling_arrcoc  # noqa: F401  (registers ArrCoc with the Auto classes)
from modeling_arrcoc.data.recipe import build_datasets
from modeling_arrcoc.provenance import repo_path
from modeling_arrcoc.training.recipe import parse_config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a train.py YAML")
    parser.add_argument("overrides", nargs="*", help="key=value, as train.py takes them")
    parser.add_argument("--num-proc", type=int, default=2, help="rendering processes")
    args = parser.parse_args(argv)
    model_args, data_args, _ = parse_config([args.config, *args.overrides])
    source = repo_path(model_args.init_from or model_args.model_preset)
    overrides = {} if model_args.init_from else model_args.config_overrides or {}
    start = time.perf_counter()
    train, evaluation = build_datasets(data_args, AutoConfig.from_pretrained(source, **overrides),
                                       num_proc=args.num_proc)
    print(f"{len(train)} training and {0 if evaluation is None else len(evaluation)} validation rows ready in "
          f"{time.perf_counter() - start:.0f} s ({args.num_proc} processes)")


__all__ = ["main"]


if __name__ == "__main__":
    main()
