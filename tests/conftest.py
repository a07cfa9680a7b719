"""Test-wide settings: one torch thread per process; the `s3` fixture (tests/s3_server.py) everywhere.

The tests run tiny models, where thread start-up costs more than it saves, and several tests start
subprocesses (writers, accelerate ranks) that would otherwise fight over the two cores.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads at import)

torch.set_num_threads(1)

pytest_plugins = ["tests.s3_server"]  # the local S3 server fixture, for any test that asks for `s3`

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """The shared tiny teacher capture (tests/student_store_fixture.py) as a store, once per module."""
    from tests.student_store_fixture import shared_capture, write_capture_store

    return write_capture_store(shared_capture(), tmp_path_factory.mktemp("store") / "cache")


@pytest.fixture(scope="module")
def feature_store(tmp_path_factory) -> str:
    """The same capture with the block outputs blockkd reads (features.*), as a store, once per module."""
    from tests.student_store_fixture import shared_capture, write_capture_store

    return write_capture_store(shared_capture(features=True), tmp_path_factory.mktemp("store") / "cache")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate fixes its setup (mixed precision, the processes) once per process: after every test,
    let the next training run set it up anew (a bf16 run after a float32 one would otherwise fail)."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
