"""Fixtures for the fastattn test suite.

``tests/`` is put on sys.path so the test modules can ``import reference`` and
``import helpers``; fastattn itself is imported from the installed package.
Set FASTATTN_TEST_SEED to replay a failing test's random inputs (the seed of
every test is printed and shown by pytest when the test fails).
"""

import os
import secrets
import sys

import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


@pytest.fixture
def rng(request):
    env = os.environ.get("FASTATTN_TEST_SEED")
    seed = int(env) if env else secrets.randbits(63)
    # printed during setup: pytest shows it under "Captured stdout setup" on failure
    print(f"\n[{request.node.nodeid}] rng seed = {seed} (replay with FASTATTN_TEST_SEED={seed})")
    request.node.user_properties.append(("rng_seed", seed))
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def available_isas():
    import fastattn

    return list(fastattn.backends()["cpu"]["available_isas"])


@pytest.fixture
def restore_threads():
    """Restores fastattn's thread count after a test that changes it."""
    import fastattn

    n = fastattn.get_num_threads()
    yield n
    fastattn.set_num_threads(n)

