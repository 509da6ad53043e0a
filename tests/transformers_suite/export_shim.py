"""Stand-in for transformers' `tests/exporters/test_export.py`, which the PyPI sdist does not ship.

`ModelTesterMixin` derives from `ExportTesterMixin`; the real one adds the torch.export common tests. This empty
mixin keeps `test_modeling_common` importable; ArrCoc's own torch.export check lives in
tests/test_transformers_common.py (ArrCocCompileExportTest).
"""

IS_STAND_IN = True


class ExportTesterMixin:
    pass
