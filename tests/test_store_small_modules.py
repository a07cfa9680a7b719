"""The store's small modules by hand: a teacher's state_dict digest against sha256 of its documented
record (name, dtype, shape, bytes, in name order; non-tensor entries by repr), the shortened value in a
fingerprint refusal, bfloat16 bits both ways (a bf16 tensor also stored in another dtype; numpy values
stored without importing torch), the package's lazily imported `example_batches`, and the refusal of
a field shape that is not positive integers or a field spec that is not {dtype, shape list}."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import shared.store
from shared.errors import DistillCacheError
from shared.store.dtypes import from_storage, to_storage
from shared.store.fingerprint import check_fingerprint, check_teacher_record, state_dict_digest
from shared.store.schema import FieldSpec


class TwoTensorsAndAnExtra(torch.nn.Module):
    """state_dict: {"_extra_state": {"k": 1}, "b": int64 [7], "w": float32 [[1, 2]]}."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.tensor([[1.0, 2.0]]))
        self.register_buffer("b", torch.tensor([7]))

    def get_extra_state(self):
        return {"k": 1}

    def set_extra_state(self, state):
        pass


def test_state_dict_digest_is_sha256_of_each_entry_in_name_order():
    expected = hashlib.sha256()
    expected.update(b"_extra_state:{'k': 1}\n")  # not a tensor: its repr; "_" sorts before "b" and "w"
    expected.update(b"b:torch.int64:(1,)\n" + (7).to_bytes(8, "little"))
    expected.update(b"w:torch.float32:(1, 2)\n" + np.array([1.0, 2.0], "<f4").tobytes())
    assert state_dict_digest(TwoTensorsAndAnExtra()) == expected.hexdigest()


def test_a_long_fingerprint_is_cut_to_120_characters_in_its_refusal():
    def refusal(value) -> str:
        with pytest.raises(DistillCacheError) as refused:
            check_fingerprint(value, "store")
        return str(refused.value).rpartition("got ")[2]

    assert refusal("a" * 118) == "'" + "a" * 118 + "'"  # a repr of 120 characters: whole
    assert refusal("a" * 119) == "'" + "a" * 116 + "..."  # 121: its first 117 and "..."
    assert refusal(["x"]) == "['x']"


@pytest.mark.parametrize("values", [torch.tensor([1.5, -2.25], dtype=torch.bfloat16), np.array([1.5, -2.25])])
def test_bfloat16_is_kept_as_its_bits_and_read_back(values):
    bits = to_storage(values, "bfloat16")  # a tensor or numpy values
    assert bits.dtype == np.uint16 and bits.tolist() == [0x3FC0, 0xC010]  # sign, 8 exponent, 7 mantissa bits
    back = from_storage(np.array([0x3FC0, 0xC010], dtype=np.uint16), "bfloat16")
    assert back.dtype == torch.bfloat16 and back.tolist() == [1.5, -2.25]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_bfloat16_tensor_is_stored_in_another_dtype_through_torch(dtype):
    """numpy has no bfloat16: a bf16 teacher's outputs are cast by torch (also with grad on)."""
    stored = to_storage(torch.tensor([1.5, -2.25], dtype=torch.bfloat16, requires_grad=True), dtype)
    assert stored.dtype == np.dtype(dtype) and stored.tolist() == [1.5, -2.25]


def test_numpy_values_are_stored_without_importing_torch():
    """The store's command-line tools start without torch (shared.store.dtypes imports it only for tensors)."""
    script = (
        "import sys, numpy as np; from shared.store.dtypes import to_storage; "
        "stored = to_storage(np.array([1.5, -2.25]), 'float16'); "
        "print(stored.dtype, stored.tolist(), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["float16", "[1.5,", "-2.25]", "False"]


def test_example_batches_is_imported_on_first_use_and_other_names_are_refused():
    from shared.store.batches import example_batches

    assert shared.store.example_batches is example_batches
    with pytest.raises(AttributeError) as refused:
        shared.store.no_such_name  # noqa: B018
    assert str(refused.value) == "module 'shared.store' has no attribute 'no_such_name'"


@pytest.mark.parametrize("shape", [(0,), (2, -1), (True,), ("3",), 5])
def test_a_field_shape_that_is_not_positive_integers_is_refused(shape):
    with pytest.raises(DistillCacheError) as refused:
        FieldSpec("float32", shape)
    assert str(refused.value) == f"field shape {shape!r} must be a tuple of positive integers"


@pytest.mark.parametrize("value", [{"dtype": "float32", "shape": 4}, {"dtype": "float32"}, ["float32", [4]]])
def test_a_field_spec_that_is_not_a_dict_with_a_shape_list_is_refused(value):
    with pytest.raises(DistillCacheError) as refused:
        FieldSpec.from_json(value)
    assert str(refused.value) == f"field spec {value!r} must be {{'dtype': ..., 'shape': [...]}}"
    assert FieldSpec.from_json({"dtype": "float32", "shape": [4, 2]}) == FieldSpec("float32", (4, 2))


def test_a_field_shape_of_ones_given_as_a_list_is_kept_as_a_tuple():
    assert FieldSpec("float32", [1, 3]).shape == (1, 3)
    assert FieldSpec("uint8", (1,)).sample_nbytes == 1 and FieldSpec("bfloat16", [1, 3]).sample_nbytes == 6


GOOD = {"pipeline_class": "StableDiffusionPipeline", "weights_hash": "ab12", "denoiser_hash": "cd34"}


@pytest.mark.parametrize(
    "fingerprint",
    [
        {k: v for k, v in GOOD.items() if k != "weights_hash"},  # a key missing
        {**GOOD, "seed": "3"},  # a key too many
        {**GOOD, "denoiser_hash": ""},  # an empty value
        {**GOOD, "denoiser_hash": 7},  # not a string
        "StableDiffusionPipeline",  # not a dict
    ],
)
def test_a_fingerprint_that_is_not_the_three_non_empty_strings_is_refused(fingerprint):
    with pytest.raises(DistillCacheError) as refused:
        check_fingerprint(fingerprint, "s3://b/store")
    assert str(refused.value) == (
        "s3://b/store: the teacher fingerprint must be {pipeline_class, weights_hash, denoiser_hash} "
        f"(non-empty strings), got {fingerprint!r}"
    )
    assert check_fingerprint(dict(GOOD), "s3://b/store") == GOOD


@pytest.mark.parametrize(
    "teacher",
    [
        {"source": "", "revision": None},  # an empty source
        {"source": 3, "revision": None},  # not a string
        {"source": "org/name", "revision": 5},  # a revision that is neither a string nor None
    ],
)
def test_a_teacher_record_without_a_source_string_and_a_revision_is_refused(teacher):
    with pytest.raises(DistillCacheError) as refused:
        check_teacher_record(teacher, "store")
    assert str(refused.value) == (
        f"store: the teacher record must be {{'source': str, 'revision': str | None}}, got {teacher!r}"
    )
    assert check_teacher_record({"source": "org/name", "revision": None}, "store")["source"] == "org/name"
