"""A local S3 API for the tests: moto's server on 127.0.0.1 at a free port, with s3fs pointed at it.

    def test_x(s3):                                   # registered for every test in tests/conftest.py
        url = s3.new_bucket() + "/store"          # "s3://<fresh bucket>/store"
        ...                                       # any s3:// URL now reaches the server, in this
                                                  # process and in child processes (s3.env)

One server per test session (started on first use, stopped at the end); each test gets its own
buckets. The environment (credentials "testing", region, endpoint) is set for this process with
monkeypatch and is in `s3.env` for subprocesses; botocore reads the endpoint from
AWS_ENDPOINT_URL_S3, so s3fs needs no other configuration. No network is used.
"""

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance metadata service
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    env: dict = field(default_factory=dict)  # os.environ for child processes that use the server

    def new_bucket(self) -> str:
        """A fresh, empty bucket on the server: its s3:// URL."""
        import s3fs

        name = f"test-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch) -> S3Server:
    """The session's S3 server, reachable through s3:// URLs for this test (and its subprocesses)."""
    import s3fs

    settings = {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": s3_endpoint}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # instances made before hold other settings
    yield S3Server(s3_endpoint, {**os.environ, **settings})
    s3fs.S3FileSystem.clear_instance_cache()
