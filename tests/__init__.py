import pytest

# Shared test helpers whose asserts should report values as a test module's do.
pytest.register_assert_rewrite("tests.families_support")
