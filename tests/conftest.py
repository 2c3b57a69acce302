"""Suite-wide pytest configuration. The markers are registered in pyproject.toml; shared helpers are modules of
this package (see ``tests/__init__.py``), not test modules importing each other."""
import pytest

SLOW_KINDS = ("ray", "subprocess", "real_size")
"""Markers of tests that take seconds each; such a test is also marked ``slow``."""


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects: ``pytest -m "not slow"`` leaves these tests out
def pytest_collection_modifyitems(items):
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread (and CI's 2 cores are shared by the suite's processes)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
