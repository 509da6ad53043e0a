"""Training: the run train.py makes from a YAML (`recipe`), the phase table (`phases`), `ArrCocTrainingArguments`
(`arguments`), `ArrCocTrainer` (`trainer`), optimizer groups (`optim`), budget calibration (`calibration`), the SAM
feature cache and non-finite guard (`guards`), and held-out learning curves (`curves`). The library
(`modeling_arrcoc`) never imports this package.
"""
