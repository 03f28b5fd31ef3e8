"""Helpers shared by the layer reference tests."""

import jax
import jax.numpy as jnp
import numpy as np

# An "rbg" key: on CPU its random bits compile in a fraction of a second per new shape,
# where the default threefry takes seconds; inputs come from NumPy for the same reason.
KEY = jax.random.key(0, impl="rbg")


def spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def rand(shape, seed=1, dtype=np.float32, scale=1.0):
    return jnp.asarray((scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype))


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


def shapes_and_dtypes(tree):
    return jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), tree)


def random_params(layer, x, seed=0):
    """Params of exactly the shapes and dtypes ``layer.init`` gives, filled from NumPy
    (N(0, 0.5^2), biases included, so a missing or misplaced bias shows).

    Tests of the forward computation use these: a real init compiles its initializer again
    for every new shape, which is most of the runtime on CPU. Tests of init use real inits.
    """
    abstract, _ = jax.eval_shape(layer.init, KEY, x)
    leaves, tree = jax.tree.flatten(abstract)
    return jax.tree.unflatten(
        tree, [rand(v.shape, seed=seed + i, dtype=v.dtype, scale=0.5) for i, v in enumerate(leaves)]
    )
