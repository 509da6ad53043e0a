"""Repository tools (export the base, render the README's blocks, write the presets, ...): run each as a module from
the repository root, `python -m tools.<name>`.

A package so that tests can call a tool's `main`; tools never import each other, nor train.py, eval.py or bench/:
what they share lives in `modeling_arrcoc`.
"""
