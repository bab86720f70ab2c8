import numpy as np
import pytest

from invariant_mr.data import MRData
from invariant_mr.errors import InputError


def _arrays(n=100, p=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        Z=rng.standard_normal((n, p)),
        exposure=rng.standard_normal(n),
        outcome=rng.standard_normal(n),
        env=np.array(["a"] * (n // 2) + ["b"] * (n - n // 2), dtype=object),
    )


def test_valid_data_is_read_only_copy():
    arrays = _arrays()
    data = MRData(**arrays)
    arrays["Z"][0, 0] = 99.0
    assert data.Z[0, 0] != 99.0
    with pytest.raises(ValueError):
        data.Z[0, 0] = 1.0
    assert data.env_levels == ("a", "b")
    assert data.env_dummies().shape == (100, 1)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(exposure=a["exposure"][:-1]), "exposure has 99 rows"),
        (lambda a: a["outcome"].__setitem__(slice(0, 3), np.nan), "outcome has 3 NaN/inf"),
        (lambda a: a.update(env=np.array(["a"] * 100, dtype=object)), "at least 2 environments"),
        (lambda a: a.update(env=np.array(["a"] * 95 + ["b"] * 5, dtype=object)), r"'b' \(n=5\)"),
    ],
)
def test_invalid_inputs_raise_specific_errors(change, message):
    arrays = _arrays()
    change(arrays)
    with pytest.raises(InputError, match=message):
        MRData(**arrays)


def test_nan_in_instrument_names_column_and_count():
    arrays = _arrays()
    arrays["Z"][:4, 1] = np.inf
    with pytest.raises(InputError, match=r"z2 \(4\)"):
        MRData(**arrays)


def test_constant_and_duplicate_columns_dropped_with_warning():
    arrays = _arrays()
    Z = arrays["Z"]
    arrays["Z"] = np.column_stack([Z, np.ones(100), Z[:, 0]])
    with pytest.warns(UserWarning, match=r"z4 \(constant\).*z5 \(duplicate of z1\)"):
        data = MRData(**arrays)
    assert data.instrument_names == ("z1", "z2", "z3")
    with pytest.raises(InputError, match="found constant or duplicate"):
        MRData(**arrays, drop_degenerate=False)


def test_array_hash_is_the_sha256_of_the_c_order_bytes_without_copying():
    import hashlib

    from invariant_mr.provenance import sha256_array

    for a in (np.arange(12.0).reshape(3, 4), np.arange(12.0).reshape(3, 4).T, np.zeros((0, 3)),
              np.array([1, 2, 3], dtype=np.int8)):
        assert sha256_array(a) == hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
    assert sha256_array(np.arange(4.0)) != sha256_array(np.arange(4.0)[::-1])
