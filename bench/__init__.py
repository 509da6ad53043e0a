"""The benchmarks (`make bench`): run each as a module from the repository root, `python -m bench.<name>`.

A package so that its modules share their helpers (`bench.common`, `bench.flops`, ...) by ordinary imports; what they
share with train.py, eval.py and tools/ lives in `modeling_arrcoc`, never here.
"""
