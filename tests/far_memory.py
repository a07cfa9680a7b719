"""An in-process "remote" filesystem for fast tests of the object-store code paths.

    from tests.far_memory import FarMemoryFileSystem, new_far_url
    url = new_far_url()                      # farmem://bucket-<random>/store
    StoreReader(url, cache_dir=tmp_path)     # treated as an object store: read-through copies, batched cats

fsspec's memory:// under a protocol of its own: StoreLocation sees neither a local folder nor
memory:// (which shared/store/read_cache.py never copies), so the paths an object store takes run
in milliseconds, without moto's server (tests/s3_server.py, the slow tests). It shares memory://'s
limits: no mtimes beyond `created`, no buckets to create.
"""

import uuid

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

PROTOCOL = "farmem"


class FarMemoryFileSystem(MemoryFileSystem):
    protocol = (PROTOCOL,)
    store: dict = {}  # its own files, apart from memory://'s
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix(f"{PROTOCOL}://"))


fsspec.register_implementation(PROTOCOL, FarMemoryFileSystem, clobber=True)


def new_far_url(name: str = "store") -> str:
    return f"{PROTOCOL}://bucket-{uuid.uuid4().hex[:12]}/{name}"
