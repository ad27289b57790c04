"""tests/e2e runs on the shared end-to-end stack of tests/e2e_stack.py (its fixtures are
registered in tests/conftest.py); the names below are re-exported for the test modules."""

from tests.e2e_stack import TERMINAL, Client, training_processes  # noqa: F401
