"""A local S3 API for the benchmarks: moto's server in a child process, with s3fs pointed at it.

    with moto_s3() as new_bucket:          # sets the AWS_* variables (restored after the block)
        url = new_bucket() + "/store"      # "s3://<fresh bucket>/store"

The same server and settings as the tests' `s3` fixture (tests/s3_server.py), but in its own process,
so that the server's work is not done on the measured process's threads (nor under its GIL).
"""

import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager

import requests

from tests.s3_server import CREDENTIALS, free_port


@contextmanager
def moto_s3():
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = dict(os.environ)
    os.environ.update({**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint})
    try:
        wait_until_up(endpoint, server)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()

        def new_bucket() -> str:
            name = f"bench-{uuid.uuid4().hex[:12]}"
            s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
            return f"s3://{name}"

        yield new_bucket
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.environ.clear()
        os.environ.update(saved)


def wait_until_up(endpoint: str, server: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto server exited with status {server.returncode}")
        try:
            requests.get(f"{endpoint}/moto-api/", timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError(f"moto server at {endpoint} did not start in {seconds:.0f} s")
