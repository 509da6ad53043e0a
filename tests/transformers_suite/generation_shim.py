"""Stand-in for transformers' `tests/generation/test_utils.py`, which the PyPI sdist does not ship.

`test_modeling_common` imports `GenerationTesterMixin` from it, and its `test_generation_tester_mixin_inheritance`
checks that a tester of a generative class inherits it. This empty mixin keeps both working; it runs no generate
test. ArrCoc's generate checks (greedy, sampling, beam search, cache reuse, assisted decoding, return_dict_in_generate)
are in tests/test_transformers_common.py (ArrCocGenerationTest).
"""

IS_STAND_IN = True


class GenerationTesterMixin:
    pass
