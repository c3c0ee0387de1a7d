import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentrl_jax import segments


def _segs(rng):
    pieces = [list(rng.integers(1, 50, size=rng.integers(0, 6))) for _ in range(4)]
    dev = []
    for p in pieces:
        buf = np.zeros(7, np.int32)
        buf[: len(p)] = p
        dev.append((jnp.asarray(buf), jnp.asarray(len(p), jnp.int32)))
    return pieces, dev


@pytest.mark.parametrize("size", [3, 12, 30])
def test_pack_right_matches_host(size):
    rng = np.random.default_rng(size)
    for _ in range(20):
        pieces, dev = _segs(rng)
        ids, mask, total = jax.jit(lambda d: segments.pack_right(d, size, 0))(dev)
        hid, hmask, htotal = segments.pack_right_host(pieces, size, 0)
        np.testing.assert_array_equal(ids, hid)
        np.testing.assert_array_equal(mask, hmask)
        assert int(total) == htotal == sum(len(p) for p in pieces)
        flat = [t for p in pieces for t in p]
        # The right-aligned content is the (left-truncated) concatenation.
        kept = flat[-size:] if flat else []
        assert list(np.asarray(ids)[np.asarray(mask) == 1]) == kept


def test_find_first_pattern_picks_earliest():
    patterns, lengths = segments.pad_table([[5, 6], [7], [8, 9, 10]], pad_id=0)
    tokens = jnp.array([1, 8, 9, 10, 7, 5, 6, 0])
    valid = jnp.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
    k, pos = jax.jit(segments.find_first_pattern)(tokens, valid, patterns, lengths)
    assert (int(k), int(pos)) == (2, 1)
    # A pattern cut off by the end of the generated text does not count.
    k, pos = segments.find_first_pattern(jnp.array([3, 3, 8, 9]), jnp.ones(4, bool), patterns, lengths)
    assert (int(k), int(pos)) == (-1, 4)
    # Invalid (not generated) positions never match.
    k, _ = segments.find_first_pattern(jnp.array([7, 1]), jnp.array([False, True]), patterns, lengths)
    assert int(k) == -1
