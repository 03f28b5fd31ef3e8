"""Reference tests for the normalisation layers: BatchNorm, LayerNorm, GroupNorm, RMSNorm.

Each layer is checked against ``flax.linen`` with the same (non-trivial) scale and bias, and
against a plain-NumPy statement of its maths; then the layer contract (abstract init, shapes
and dtypes, gradients, jit == eager) and the errors for bad configurations and inputs.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

import fnn

KEY = jax.random.key(0)


def rand(shape, seed=1, loc=0.0, scale=1.0, dtype=jnp.float32):
    """Normal samples with a non-zero mean, so that centring matters (drawn with NumPy:
    a jax.random draw per shape would compile a program per shape)."""
    return jnp.asarray(loc + scale * np.random.default_rng(seed).standard_normal(shape), dtype)


def spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=tol, atol=tol)


def random_affine(params, seed=5):
    """Replace the ones/zeros that init gives by random values, so that a swapped or
    mis-broadcast scale or bias shows up."""
    out = {}
    for i, (name, value) in enumerate(sorted(params.items())):
        noise = np.random.default_rng(seed + i).standard_normal(value.shape)
        out[name] = jnp.asarray((1.0 + 0.5 * noise) if name == "scale" else 0.5 * noise, value.dtype)
    return out


def affine_keys(use_scale, use_bias):
    return {name for name, used in (("scale", use_scale), ("bias", use_bias)) if used}


# ---- plain-NumPy references ------------------------------------------------------------------


def np_affine(y, scale, bias, axis=-1):
    shape = [1] * y.ndim
    shape[axis] = y.shape[axis]
    if scale is not None:
        y = y * np.asarray(scale, np.float64).reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(shape)
    return y


def np_layer_norm(x, scale, bias, eps):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return np_affine((x - mean) / np.sqrt(var + eps), scale, bias)


def np_group_norm(x, groups, scale, bias, eps):
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    per_group = x.shape[-1] // groups
    for n in range(x.shape[0]):
        for g in range(groups):
            block = x[n, ..., g * per_group:(g + 1) * per_group]
            out[n, ..., g * per_group:(g + 1) * per_group] = (
                (block - block.mean()) / np.sqrt(block.var() + eps)
            )
    return np_affine(out, scale, bias)


def np_rms_norm(x, scale, eps):
    x = np.asarray(x, np.float64)
    return np_affine(x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps), scale, None)


def np_batch_stats(x, axis):
    x = np.asarray(x, np.float64)
    reduce = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    return x.mean(reduce), x.var(reduce)


def np_batch_norm(x, mean, var, scale, bias, eps, axis):
    x = np.asarray(x, np.float64)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    y = (x - np.reshape(mean, shape)) / np.sqrt(np.reshape(var, shape) + eps)
    return np_affine(y, scale, bias, axis)


# ---- LayerNorm -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "use_scale, use_bias, epsilon",
    [(True, True, 1e-6), (True, False, 0.5), (False, True, 1e-6), (False, False, 0.5), (True, True, 0.5)],
)
def test_layer_norm_matches_flax_and_numpy(use_scale, use_bias, epsilon):
    x = rand((3, 4, 6), loc=2.0, scale=3.0)
    layer = fnn.LayerNorm(epsilon=epsilon, use_scale=use_scale, use_bias=use_bias)
    params, state = layer.init(KEY, x)
    assert state == {}
    assert set(params) == affine_keys(use_scale, use_bias)
    params = random_affine(params)
    ref = nn.LayerNorm(epsilon=epsilon, use_scale=use_scale, use_bias=use_bias, use_fast_variance=False)
    variables = ref.init(jax.random.key(7), x)
    assert jax.tree.map(jnp.shape, variables.get("params", {})) == jax.tree.map(jnp.shape, params)
    y = layer(params, x)
    close(y, ref.apply({"params": params}, x))
    close(y, np_layer_norm(x, params.get("scale"), params.get("bias"), epsilon))


def test_layer_norm_normalises_the_last_axis_only():
    x = rand((2, 5, 8), loc=-1.0, scale=4.0)
    y = fnn.LayerNorm(use_scale=False, use_bias=False)({}, x)
    close(jnp.mean(y, -1), np.zeros((2, 5)), tol=1e-5)
    close(jnp.var(y, -1), np.ones((2, 5)), tol=1e-4)
    # each example is normalised on its own: changing one leaves the others alone
    y2 = fnn.LayerNorm(use_scale=False, use_bias=False)({}, x.at[0].multiply(10.0))
    close(y2[1], y[1], tol=1e-6)


# ---- GroupNorm -------------------------------------------------------------------------------


@pytest.mark.parametrize("num_groups, epsilon", [(1, 1e-6), (2, 0.3), (6, 1e-6)])
def test_group_norm_matches_flax_and_numpy_on_images(num_groups, epsilon):
    x = rand((2, 4, 3, 6), loc=1.5, scale=2.0)
    layer = fnn.GroupNorm(num_groups=num_groups, epsilon=epsilon)
    params, _ = layer.init(KEY, x)
    assert jax.tree.map(jnp.shape, params) == {"scale": (6,), "bias": (6,)}
    params = random_affine(params)
    ref = nn.GroupNorm(num_groups=num_groups, epsilon=epsilon, use_fast_variance=False)
    ref.init(jax.random.key(7), x)
    y = layer(params, x)
    close(y, ref.apply({"params": params}, x))
    close(y, np_group_norm(x, num_groups, params["scale"], params["bias"], epsilon))


@pytest.mark.parametrize("shape", [(3, 8), (1, 2, 2, 2, 8)])
def test_group_norm_matches_numpy_for_any_number_of_spatial_axes(shape):
    x = rand(shape, loc=-0.5, scale=2.0)
    layer = fnn.GroupNorm(num_groups=4, use_bias=False)
    params = random_affine(layer.init(KEY, x)[0])
    assert set(params) == {"scale"}
    close(layer(params, x), np_group_norm(x, 4, params["scale"], None, 1e-6))


def test_group_norm_with_one_group_per_channel_is_instance_norm_and_one_group_is_layer_norm_of_all():
    x = rand((2, 4, 3, 6), loc=1.0, scale=2.0)
    per_channel = fnn.GroupNorm(num_groups=6, use_scale=False, use_bias=False)({}, x)
    mean, var = x.mean((1, 2), keepdims=True), x.var((1, 2), keepdims=True)
    close(per_channel, (x - mean) / jnp.sqrt(var + 1e-6))
    whole = fnn.GroupNorm(num_groups=1, use_scale=False, use_bias=False)({}, x)
    mean, var = x.mean((1, 2, 3), keepdims=True), x.var((1, 2, 3), keepdims=True)
    close(whole, (x - mean) / jnp.sqrt(var + 1e-6))


# ---- RMSNorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("use_scale, epsilon", [(True, 1e-6), (False, 0.25), (True, 0.25)])
def test_rms_norm_matches_flax_and_numpy(use_scale, epsilon):
    x = rand((3, 4, 5), loc=1.0, scale=2.0)
    layer = fnn.RMSNorm(epsilon=epsilon, use_scale=use_scale)
    params, _ = layer.init(KEY, x)
    assert set(params) == ({"scale"} if use_scale else set())
    params = random_affine(params)
    ref = nn.RMSNorm(epsilon=epsilon, use_scale=use_scale)
    ref.init(jax.random.key(7), x)
    y = layer(params, x)
    close(y, ref.apply({"params": params}, x))
    close(y, np_rms_norm(x, params.get("scale"), epsilon))


def test_rms_norm_does_not_centre():
    x = jnp.array([[3.0, 4.0], [10.0, 10.0]])
    y = fnn.RMSNorm(epsilon=1e-12, use_scale=False)({}, x)
    close(y, [[3 / np.sqrt(12.5), 4 / np.sqrt(12.5)], [1.0, 1.0]], tol=1e-6)


def test_rms_norm_gradient_from_bfloat16_plans_no_more_than_the_plain_maths():
    """From bfloat16 the layer's gradient planned more temporaries than the plain
    ``x32 * rsqrt(mean(x32 * x32) + eps) * scale`` (1.25x here, 1.75x with other losses
    and shapes: a zero mean subtracted, and ``jnp.square``, each kept a float32 copy of
    the input)."""
    x = rand((4096, 64)).astype(jnp.bfloat16)
    layer = fnn.RMSNorm()
    params = random_affine(layer.init(KEY, x)[0])

    def plain(p, x):
        x32 = x.astype(jnp.float32)
        return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6) * p["scale"]).astype(x.dtype)

    def plan(norm):
        loss = lambda p, x: jnp.sum(jnp.sin(norm(p, x).astype(jnp.float32)))  # noqa: E731
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert plan(layer) <= plan(plain)
    close(layer(params, x).astype(jnp.float32), plain(params, x).astype(jnp.float32), tol=1e-2)


# ---- BatchNorm: training and evaluation against flax -----------------------------------------


def flax_batch_norm_steps(x_steps, momentum, epsilon, axis, use_scale, use_bias, params):
    """Run flax's BatchNorm in training mode over the batches; return outputs and stats."""
    ref = nn.BatchNorm(use_running_average=False, momentum=momentum, epsilon=epsilon, axis=axis,
                       use_scale=use_scale, use_bias=use_bias, use_fast_variance=False)
    variables = ref.init(jax.random.key(7), x_steps[0])
    stats = variables["batch_stats"]
    outputs, all_stats = [], []
    for x in x_steps:
        y, updates = ref.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        stats = updates["batch_stats"]
        outputs.append(y)
        all_stats.append(stats)
    return outputs, all_stats


@pytest.mark.parametrize(
    "shape, axis, momentum",
    [((8, 5), -1, 0.9), ((4, 3, 3, 5), -1, 0.5), ((6, 5, 4), 1, 0.9), ((4, 5, 3, 3), 1, 0.5),
     ((5, 3, 3), 1, 0.9)],
    ids=["dense", "nhwc", "channels_first_1d", "nchw", "channels_first_square"],
)
def test_batch_norm_training_matches_flax_outputs_and_running_statistics(shape, axis, momentum):
    """fnn's ``r = momentum * r + (1 - momentum) * batch`` is flax's convention too: the same
    ``momentum`` must give the same running mean and (biased) variance step after step."""
    steps = [rand(shape, seed=s, loc=s - 1.0, scale=1.0 + s) for s in range(3)]
    layer = fnn.BatchNorm(momentum=momentum, epsilon=1e-3, axis=axis)
    params, state = layer.init(KEY, steps[0])
    features = shape[axis]
    assert jax.tree.map(jnp.shape, (params, state)) == (
        {"scale": (features,), "bias": (features,)}, {"mean": (features,), "var": (features,)})
    close(state["mean"], np.zeros(features))
    close(state["var"], np.ones(features))
    params = random_affine(params)
    ref_outputs, ref_stats = flax_batch_norm_steps(steps, momentum, 1e-3, axis, True, True, params)
    mean_np, var_np = np.zeros(features), np.ones(features)
    for x, y_ref, stats in zip(steps, ref_outputs, ref_stats):
        y, state = layer.apply(params, state, x, train=True)
        close(y, y_ref)
        close(state["mean"], stats["mean"])
        close(state["var"], stats["var"])
        batch_mean, batch_var = np_batch_stats(x, axis)
        close(y, np_batch_norm(x, batch_mean, batch_var, params["scale"], params["bias"], 1e-3, axis))
        mean_np = momentum * mean_np + (1 - momentum) * batch_mean
        var_np = momentum * var_np + (1 - momentum) * batch_var
        close(state["mean"], mean_np)
        close(state["var"], var_np)
    # evaluation uses the running statistics, as flax's use_running_average=True does
    x = rand(shape, seed=11, loc=0.5)
    y_eval, after = layer.apply(params, state, x, train=False)
    ref = nn.BatchNorm(use_running_average=True, momentum=momentum, epsilon=1e-3, axis=axis)
    close(y_eval, ref.apply({"params": params, "batch_stats": ref_stats[-1]}, x))
    close(y_eval, np_batch_norm(x, mean_np, var_np, params["scale"], params["bias"], 1e-3, axis))
    chex.assert_trees_all_equal(after, state)


@pytest.mark.parametrize("use_scale, use_bias", [(False, True), (True, False), (False, False)])
def test_batch_norm_without_scale_or_bias_matches_flax(use_scale, use_bias):
    x = rand((6, 4), loc=3.0, scale=2.0)
    layer = fnn.BatchNorm(use_scale=use_scale, use_bias=use_bias)
    params, state = layer.init(KEY, x)
    assert set(params) == affine_keys(use_scale, use_bias)
    params = random_affine(params)
    (y_ref,), (stats,) = flax_batch_norm_steps([x], 0.99, 1e-5, -1, use_scale, use_bias, params)
    y, state = layer.apply(params, state, x, train=True)
    close(y, y_ref)
    chex.assert_trees_all_close(state, dict(stats), rtol=1e-5, atol=1e-6)


def test_batch_norm_state_changes_only_in_training():
    layer = fnn.BatchNorm(momentum=0.8)
    x = rand((8, 3), loc=2.0, scale=3.0)
    params, state = layer.init(KEY, x)
    y_eval, same = layer.apply(params, state, x)  # train defaults to False
    chex.assert_trees_all_equal(same, state)
    # with the initial statistics (mean 0, var 1) evaluation is nearly the identity
    close(y_eval, x / np.sqrt(1 + 1e-5), tol=1e-6)
    _, trained = layer.apply(params, state, x, train=True)
    assert not np.allclose(trained["mean"], state["mean"])
    assert not np.allclose(trained["var"], state["var"])
    _, again = layer.apply(params, trained, rand((8, 3), seed=4), train=False)
    chex.assert_trees_all_equal(again, trained)
    # the input state is not modified in place
    close(state["mean"], np.zeros(3))
    close(state["var"], np.ones(3))


def test_batch_norm_evaluation_uses_given_running_statistics():
    layer = fnn.BatchNorm(epsilon=1e-3)
    x = rand((5, 3), loc=1.0)
    params, _ = layer.init(KEY, x)
    params = random_affine(params)
    state = {"mean": jnp.array([1.0, -2.0, 0.5]), "var": jnp.array([4.0, 0.25, 1.0])}
    y, _ = layer.apply(params, state, x, train=False)
    close(y, np_batch_norm(x, state["mean"], state["var"], params["scale"], params["bias"], 1e-3, -1))


def test_batch_norm_momentum_extremes():
    x = rand((8, 3), loc=2.0, scale=3.0)
    frozen = fnn.BatchNorm(momentum=1.0)
    params, state = frozen.init(KEY, x)
    _, after = frozen.apply(params, state, x, train=True)
    chex.assert_trees_all_close(after, state)
    memoryless = fnn.BatchNorm(momentum=0.0)
    _, after = memoryless.apply(params, state, x, train=True)
    close(after["mean"], np.asarray(x).mean(0))
    close(after["var"], np.asarray(x, np.float64).var(0))


def test_batch_norm_on_a_batch_of_one():
    """With one example and no spatial axes the batch variance is 0: the centred input is 0,
    so the output is exactly the bias (finite, no NaN), and the running variance decays."""
    layer = fnn.BatchNorm(momentum=0.9)
    x = jnp.array([[1.0, -2.0, 3.0]])
    params, state = layer.init(KEY, x)
    params = random_affine(params)
    y, state = layer.apply(params, state, x, train=True)
    assert bool(jnp.all(jnp.isfinite(y)))
    close(y, params["bias"][None], tol=1e-6)
    close(state["mean"], 0.1 * x[0])
    close(state["var"], np.full(3, 0.9))
    # with spatial axes a single example still has statistics over its positions
    img = rand((1, 3, 3, 2), loc=1.0, scale=2.0)
    p, s = layer.init(KEY, img)
    y, _ = layer.apply(p, s, img, train=True)
    mean, var = np_batch_stats(img, -1)
    close(y, np_batch_norm(img, mean, var, None, None, 1e-5, -1), tol=1e-4)


# ---- contract: shapes, dtypes, abstract init, gradients, jit -------------------------------

NORMS = [
    (fnn.LayerNorm(use_bias=False), (2, 3, 6)),
    (fnn.GroupNorm(num_groups=2), (2, 3, 3, 4)),
    (fnn.RMSNorm(), (3, 6)),
    (fnn.BatchNorm(), (8, 4)),
    (fnn.BatchNorm(momentum=0.5, use_scale=False), (4, 3, 3, 2)),
]
NORM_IDS = [f"{type(layer).__name__}{i}" for i, (layer, _) in enumerate(NORMS)]


@pytest.mark.parametrize("layer, shape", NORMS, ids=NORM_IDS)
def test_abstract_init_matches_real_init(layer, shape):
    abstract = jax.eval_shape(layer.init, KEY, spec(*shape))
    real = layer.init(KEY, rand(shape))
    as_specs = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
    assert as_specs(abstract) == as_specs(real)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(real))
    params, state = real
    y_spec = layer.output_spec(params, state, spec(*shape))
    assert (y_spec.shape, y_spec.dtype) == (shape, jnp.float32)


@pytest.mark.parametrize("layer, shape", NORMS, ids=NORM_IDS)
def test_bfloat16_input_keeps_its_dtype_with_float32_params_and_statistics(layer, shape):
    """Documented: statistics in at least float32, output in the input's dtype."""
    x = rand(shape, loc=1.0, dtype=jnp.bfloat16)
    params, state = layer.init(KEY, x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((params, state)))
    for train in (False, True) if state else (False,):
        y, new_state = layer.apply(params, state, x, train=train)
        assert y.shape == shape and y.dtype == jnp.bfloat16
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(new_state))
        y32, _ = layer.apply(params, state, x.astype(jnp.float32), train=train)
        close(y.astype(jnp.float32), y32, tol=0.05)


def test_gradients_second_order_float64():
    """Second-order forward and reverse gradients of every norm (BatchNorm in both modes) against
    finite differences. In float64, params and running statistics too, the tolerances can be tight;
    one jitted function of all of them keeps the compile time down."""
    with jax.enable_x64(True):
        x = rand((2, 3, 4), loc=0.5, scale=1.5, dtype=jnp.float64)
        layers = {"layer_norm": fnn.LayerNorm(), "rms_norm": fnn.RMSNorm(epsilon=1e-3),
                  "group_norm": fnn.GroupNorm(num_groups=2), "batch_norm": fnn.BatchNorm()}
        params = {name: jax.tree.map(lambda a: a.astype(jnp.float64), random_affine(layer.init(KEY, x)[0]))
                  for name, layer in layers.items()}
        running = {"mean": jnp.array([0.3, -0.2, 0.1, 0.0]), "var": jnp.array([1.7, 0.5, 1.0, 2.0])}
        assert running["mean"].dtype == jnp.float64

        @jax.jit
        def outputs(p, v):
            out = {name: layer(p[name], v) for name, layer in layers.items() if name != "batch_norm"}
            bn = layers["batch_norm"]
            out["batch_norm_train"] = bn.apply(p["batch_norm"], running, v, train=True)[0]
            out["batch_norm_eval"] = bn.apply(p["batch_norm"], running, v, train=False)[0]
            return out

        assert all(y.dtype == jnp.float64 for y in jax.tree.leaves(outputs(params, x)))
        check_grads(outputs, (params, x), order=2, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6, eps=1e-5)


def test_batch_norm_running_statistics_are_not_differentiated_through_outputs():
    """In evaluation the output is affine in x with slope scale / sqrt(var + eps)."""
    layer = fnn.BatchNorm(epsilon=1e-3)
    x = rand((4, 3))
    params, _ = layer.init(KEY, x)
    state = {"mean": jnp.array([0.5, 1.0, -1.0]), "var": jnp.array([4.0, 1.0, 0.25])}
    grad = jax.grad(lambda v: jnp.sum(layer.apply(params, state, v)[0]))(x)
    close(grad, np.broadcast_to(1 / np.sqrt(np.array([4.0, 1.0, 0.25]) + 1e-3), (4, 3)))


class NormJitEqualsEager(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        *[(f"{name}_{'train' if train else 'eval'}", layer, shape, train)
          for name, (layer, shape) in zip(NORM_IDS, NORMS)
          for train in ((True, False) if isinstance(layer, fnn.BatchNorm) else (False,))]
    )
    def test_apply(self, layer, shape, train):
        x = rand(shape, loc=1.0, scale=2.0)
        params, state = layer.init(KEY, x)
        params = random_affine(params)
        apply = self.variant(lambda p, s, v: layer.apply(p, s, v, train=train))
        y, new_state = apply(params, state, x)
        y_ref, state_ref = layer.apply(params, state, x, train=train)
        chex.assert_trees_all_close((y, new_state), (y_ref, state_ref), rtol=1e-5, atol=1e-5)
        chex.assert_shape(y, shape)

    @chex.variants(with_jit=True, without_jit=True)
    def test_batch_norm_several_training_steps(self):
        layer = fnn.BatchNorm(momentum=0.7)
        params, state = layer.init(KEY, spec(6, 3))
        step = self.variant(lambda p, s, v: layer.apply(p, s, v, train=True))
        eager = state
        for seed in range(3):
            x = rand((6, 3), seed=seed, loc=seed)
            y, state = step(params, state, x)
            y_ref, eager = layer.apply(params, eager, x, train=True)
            chex.assert_trees_all_close((y, state), (y_ref, eager), rtol=1e-5, atol=1e-5)


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: fnn.LayerNorm(epsilon=0), "LayerNorm: epsilon must be > 0 and finite, got 0"),
        (lambda: fnn.LayerNorm(epsilon=-1e-5), "LayerNorm: epsilon must be > 0 and finite, got -1e-05"),
        (lambda: fnn.LayerNorm(epsilon="1e-5"), "LayerNorm: epsilon must be > 0 and finite, got '1e-5'"),
        (lambda: fnn.LayerNorm(epsilon=float("nan")), "LayerNorm: epsilon must be > 0 and finite, got nan"),
        (lambda: fnn.RMSNorm(epsilon=0.0), r"RMSNorm: epsilon must be > 0 and finite, got 0\.0"),
        (lambda: fnn.GroupNorm(epsilon=-1.0), r"GroupNorm: epsilon must be > 0 and finite, got -1\.0"),
        (lambda: fnn.BatchNorm(epsilon=0), "BatchNorm: epsilon must be > 0 and finite, got 0"),
        (lambda: fnn.GroupNorm(num_groups=0), "GroupNorm: num_groups must be a positive int, got 0"),
        (lambda: fnn.GroupNorm(num_groups=-2), "GroupNorm: num_groups must be a positive int, got -2"),
        (lambda: fnn.GroupNorm(num_groups=2.0), r"GroupNorm: num_groups must be a positive int, got 2\.0"),
        (lambda: fnn.GroupNorm(num_groups=True), "GroupNorm: num_groups must be a positive int, got True"),
        (lambda: fnn.BatchNorm(momentum=-0.1), r"BatchNorm: momentum must be in \[0, 1\], got -0\.1"),
        (lambda: fnn.BatchNorm(momentum=1.01), r"BatchNorm: momentum must be in \[0, 1\], got 1\.01"),
        (lambda: fnn.BatchNorm(momentum="0.9"), r"BatchNorm: momentum must be in \[0, 1\], got '0\.9'"),
    ],
)
def test_bad_configuration_raises_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "layer, x, message",
    [
        (fnn.LayerNorm(), spec(2, 3, dtype=jnp.int32),
         r"LayerNorm expects floating-point input, got int32\[2,3\]; embed integer ids with fnn.Embedding"),
        (fnn.RMSNorm(), spec(2, 3, dtype=jnp.int32),
         r"RMSNorm expects floating-point input, got int32\[2,3\]"),
        (fnn.GroupNorm(2), spec(2, 4, dtype=jnp.uint8),
         r"GroupNorm expects floating-point input, got uint8\[2,4\]"),
        (fnn.BatchNorm(), spec(2, 3, dtype=jnp.int32),
         r"BatchNorm expects floating-point input, got int32\[2,3\]"),
        (fnn.LayerNorm(), spec(2, 3, dtype=jnp.bool_),
         r"LayerNorm expects floating-point input, got bool\[2,3\]"),
        (fnn.LayerNorm(), spec(), r"LayerNorm expects a feature axis, got float32\[\]"),
        (fnn.RMSNorm(), spec(), r"RMSNorm expects a feature axis, got float32\[\]"),
        (fnn.BatchNorm(), spec(5), r"BatchNorm expects a batch axis and a feature axis, got float32\[5\]"),
        (fnn.GroupNorm(2), spec(4),
         r"GroupNorm\(num_groups=2\) expects \[batch, ..., channels\] with channels divisible by 2, "
         r"got float32\[4\]"),
        (fnn.GroupNorm(4), spec(2, 3, 3, 6),
         r"GroupNorm\(num_groups=4\) expects \[batch, ..., channels\] with channels divisible by 4, "
         r"got float32\[2,3,3,6\]"),
        (fnn.GroupNorm(32), spec(2, 16),
         r"GroupNorm\(num_groups=32\) .* divisible by 32, got float32\[2,16\]"),
    ],
)
def test_bad_input_raises_at_init_and_names_the_path_inside_serial(layer, x, message):
    with pytest.raises(fnn.ShapeError, match=message):
        layer.init(KEY, x)
    model = fnn.serial(block=fnn.serial(norm=layer))
    with pytest.raises(fnn.ShapeError, match="^block/norm: " + message) as info:
        model.init(KEY, x)
    assert info.value.path == ("block", "norm")
    with pytest.raises(fnn.ShapeError, match="^block/norm: "):
        jax.eval_shape(model.init, KEY, x)


def test_default_names_appear_in_the_path():
    model = fnn.serial(fnn.LayerNorm(), fnn.GroupNorm(4))
    with pytest.raises(fnn.ShapeError, match=r"^group_norm_0: GroupNorm\(num_groups=4\) expects"):
        model.init(KEY, spec(2, 6))


@pytest.mark.parametrize(
    "layer, good, bad",
    [
        (fnn.BatchNorm(), (4, 6), (4, 5)),
        (fnn.LayerNorm(), (2, 6), (2, 4)),
        (fnn.RMSNorm(), (2, 6), (2, 4)),
        (fnn.GroupNorm(2), (2, 3, 6), (2, 3, 4)),
    ],
    ids=["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm"],
)
def test_params_reused_on_another_feature_size_is_a_clear_error_naming_the_path(layer, good, bad):
    """Like Dense and BatchNorm, a norm whose params were built for 6 features must say so
    when applied to 4 features, as a ShapeError that names the layer inside serial."""
    model = fnn.serial(fnn.serial(norm=layer))
    params, state = model.init(KEY, jnp.ones(good))
    with pytest.raises(fnn.ShapeError, match=rf"^serial_0/norm: {type(layer).__name__}.*6.*"
                                             rf"float32\[{','.join(map(str, bad))}\]"):
        model.apply(params, state, jnp.ones(bad))


def test_group_norm_without_parameters_checks_its_groups_at_apply():
    layer = fnn.serial(norm=fnn.GroupNorm(3, use_scale=False, use_bias=False))
    params, _ = layer.init(KEY, spec(2, 6))
    assert layer(params, jnp.ones((2, 9))).shape == (2, 9)  # no parameter ties it to 6 channels
    with pytest.raises(fnn.ShapeError, match=r"^norm: GroupNorm\(num_groups=3\) expects .* divisible by 3, "
                                             r"got float32\[2,7\]"):
        layer(params, jnp.ones((2, 7)))  # a TypeError from a reshape before


def test_batch_norm_without_state_says_how_to_call_it():
    model = fnn.serial(fnn.Dense(3), fnn.BatchNorm())
    params, state = model.init(KEY, spec(4, 2))
    with pytest.raises(fnn.LayerError, match=r"^batch_norm_0: BatchNorm keeps running statistics as state: "
                                             r"call model.apply\(params, state, x, train=...\)"):
        model(params, jnp.ones((4, 2)))


def test_batch_norm_on_an_empty_batch_leaves_the_running_statistics():
    bn = fnn.BatchNorm()
    params, state = bn.init(KEY, jnp.ones((4, 5)))
    for x in (jnp.ones((0, 5)), jnp.ones((2, 0, 5))):  # set the statistics to NaN
        y, new_state = jax.jit(lambda p, s, v: bn.apply(p, s, v, train=True))(params, state, x)
        assert y.shape == x.shape
        chex.assert_trees_all_equal(new_state, state)


def test_batch_norm_axis_must_be_an_int():
    for axis in (1.0, "x", True, (1,)):
        with pytest.raises(ValueError, match="BatchNorm: axis must be an int"):
            fnn.BatchNorm(axis=axis)
    assert type(fnn.BatchNorm(axis=np.int64(1)).axis) is int


def test_norm_hyperparameters_take_numpy_scalars():
    bn = fnn.BatchNorm(momentum=np.float32(0.9), epsilon=np.float32(1e-5))
    assert type(bn.momentum) is float and type(bn.epsilon) is float and hash(bn) is not None
    assert type(fnn.LayerNorm(epsilon=np.float32(1e-5)).epsilon) is float


def test_norm_params_and_state_are_checked_against_the_layer():
    x = jnp.ones((4, 5))
    rms, _ = fnn.RMSNorm().init(KEY, x)
    with pytest.raises(fnn.ShapeError, match=r"LayerNorm learns parameters \{bias, scale\}, got \{scale\}"):
        fnn.LayerNorm()(rms, x)  # dropped the bias silently
    model = fnn.serial(bn=fnn.BatchNorm())
    params, state = model.init(KEY, x)
    bad_var = {"bn": {**state["bn"], "var": jnp.ones(6)}}
    with pytest.raises(fnn.ShapeError, match=r"bn: BatchNorm expects state mean and var of one shape"):
        model.apply(params, bad_var, x)  # a raw reshape TypeError
    bad_scale = {"bn": {**params["bn"], "scale": jnp.ones((5, 5))}}
    with pytest.raises(fnn.ShapeError, match=r"bn: BatchNorm expects parameter scale of shape \[features\]"):
        model.apply(bad_scale, state, x)


# -- BatchNorm of a masked sequence ---------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6, 3), (3, 5, 2, 3)], ids=["sequence", "sequence_of_rows"])
def test_batch_norm_of_a_masked_sequence_uses_the_real_steps_alone(shape):
    """Against flax's ``mask`` and NumPy over the real steps gathered: outputs at real steps
    and the running statistics, over three steps; then evaluation with the running ones."""
    lengths = np.array([6, 2, 5, 1])[: shape[0]]
    mask = jnp.asarray(np.arange(shape[1]) < lengths[:, None])
    layer = fnn.BatchNorm(momentum=0.8, epsilon=1e-3)
    params, state = layer.init(KEY, (rand(shape), mask))
    params = random_affine(params)
    ref = nn.BatchNorm(use_running_average=False, momentum=0.8, epsilon=1e-3, use_fast_variance=False)
    stats = ref.init(KEY, rand(shape), mask=mask[(...,) + (None,) * (len(shape) - 2)])["batch_stats"]
    real = np.asarray(mask)
    for step in range(3):
        x = np.array(rand(shape, seed=step, loc=step - 1.0, scale=1.0 + step))
        x[~real] = [1e6, np.nan, np.inf][step]  # what the padding holds reaches nothing
        (y, out_mask), state = layer.apply(params, state, (jnp.asarray(x), mask), train=True)
        assert out_mask is mask
        x_ref = np.where(real[(...,) + (None,) * (len(shape) - 2)], x, 0.0)
        y_ref, updates = ref.apply({"params": params, "batch_stats": stats}, x_ref,
                                   mask=mask[(...,) + (None,) * (len(shape) - 2)], mutable=["batch_stats"])
        stats = updates["batch_stats"]
        close(np.asarray(y)[real], np.asarray(y_ref)[real])
        close(state["mean"], stats["mean"])
        close(state["var"], stats["var"])
        rows = x[real].reshape(-1, shape[-1])  # the real steps gathered: a plain batch
        mean, var = np_batch_stats(rows, -1)
        close(np.asarray(y)[real].reshape(-1, shape[-1]),
              np_batch_norm(rows, mean, var, params["scale"], params["bias"], 1e-3, -1))
    x = rand(shape, seed=9)
    (y, _), after = layer.apply(params, state, (x, mask), train=False)
    chex.assert_trees_all_equal(after, state)
    y_np = np_batch_norm(x, state["mean"], state["var"], params["scale"], params["bias"], 1e-3, -1)
    close(np.asarray(y)[real], y_np[real])


def test_batch_norm_of_a_masked_sequence_differentiates_the_real_steps_alone():
    layer = fnn.BatchNorm()
    mask = jnp.array([[True, True, False], [True, False, False]])
    x = rand((2, 3, 4), loc=1.0)
    params, state = layer.init(KEY, (x, mask))
    weights = rand((2, 3, 4), seed=3)

    def loss(p, v, train=True):
        (y, m), _ = layer.apply(p, {"mean": jnp.full(4, 0.5), "var": jnp.full(4, 2.0)}, (v, mask), train=train)
        return jnp.sum(jnp.where(m[..., None], y * weights, 0.0))

    padded = x.at[~mask].set(jnp.nan)
    for train in (True, False):  # evaluation too: fnn.per_example_grads takes train=False
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(params, padded, train)
        clean = jax.grad(loss, argnums=(0, 1))(params, x, train)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads)), train
        chex.assert_trees_all_close(grads, clean, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(grads[1])[~np.asarray(mask)], 0.0)
        (y, _), _ = layer.apply(params, state, (padded, mask), train=train)
        assert np.isfinite(np.asarray(y)).all(), train
    check_grads(jax.jit(lambda v: loss(params, v)), (x,), order=1, modes=["rev"], atol=5e-2, rtol=5e-2)


def test_batch_norm_of_padding_alone_keeps_the_running_statistics():
    layer = fnn.BatchNorm(momentum=0.5)
    x, mask = rand((2, 3, 4), loc=2.0), jnp.zeros((2, 3), bool)
    params, _ = layer.init(KEY, (x, mask))
    state = {"mean": jnp.arange(4.0), "var": jnp.full(4, 2.0)}
    (y, _), after = jax.jit(lambda p, s, v: layer.apply(p, s, v, train=True))(params, state, (x, mask))
    chex.assert_trees_all_equal(after, state)
    assert np.isfinite(np.asarray(y)).all()


def test_batch_norm_of_a_masked_sequence_in_a_model():
    """The pair flows through ``serial`` into a recurrent layer and a pool; padding is inert."""
    model = fnn.serial(fnn.KeepMask(fnn.Dense(6)), fnn.BatchNorm(), fnn.Recurrent(fnn.GRU(5)), fnn.SequencePool())
    mask = jnp.array([[True] * 4, [True, True, False, False]])
    x = rand((2, 4, 3))
    params, state = model.init(KEY, (x, mask))
    y, new_state = model.apply(params, state, (x, mask), train=True)
    y2, new_state2 = model.apply(params, state, (x.at[1, 2:].set(1e4), mask), train=True)
    close(y, y2)
    chex.assert_trees_all_close(new_state, new_state2)


@pytest.mark.parametrize(
    "axis, x, mask, message",
    [
        (1, (2, 3, 4), (2, 3), r"BatchNorm of a masked sequence needs a feature axis after batch and time, "
                               r"got axis 1 of float32\[2,3,4\]"),
        (-1, (2, 3), (2, 3), r"needs a feature axis after batch and time, got axis -1 of float32\[2,3\]"),
        (-1, (2, 3, 4), (2, 4), r"BatchNorm expects a mask bool\[2,3\] for the sequence float32\[2,3,4\]"),
    ],
)
def test_batch_norm_of_a_masked_sequence_refuses_a_mask_that_does_not_fit(axis, x, mask, message):
    layer = fnn.BatchNorm(axis=axis)
    with pytest.raises(fnn.ShapeError, match=message):
        layer.init(KEY, (jnp.zeros(x), jnp.ones(mask, bool)))
    params, state = fnn.BatchNorm().init(KEY, jnp.zeros((2, 4)))
    with pytest.raises(fnn.ShapeError, match=message.replace("-1", "-?1") if axis == 1 else message):
        layer.apply(params, state, (jnp.zeros(x), jnp.ones(mask, bool)), train=True)


# -- GroupNorm of a masked sequence ---------------------------------------------------------


@pytest.mark.parametrize("shape, num_groups", [((4, 6, 6), 2), ((3, 5, 2, 4), 4)],
                         ids=["sequence", "sequence_of_rows"])
def test_group_norm_of_a_masked_sequence_normalises_each_row_over_its_real_steps(shape, num_groups):
    """Against flax's ``mask``, and each padded row against the same row cut to its length
    and normalised alone; what the padding holds reaches no real step."""
    lengths = np.array([6, 2, 5, 1])[: shape[0]]
    real = np.arange(shape[1]) < lengths[:, None]
    mask = jnp.asarray(real)
    layer = fnn.GroupNorm(num_groups=num_groups, epsilon=1e-3)
    params = random_affine(layer.init(KEY, (rand(shape), mask))[0])
    ref = nn.GroupNorm(num_groups=num_groups, epsilon=1e-3, use_fast_variance=False)
    spread = (...,) + (None,) * (len(shape) - 2)
    for pad in (1e6, np.nan, np.inf):
        x = np.array(rand(shape, loc=1.0, scale=2.0))
        x[~real] = pad
        y, out_mask = jax.jit(layer.__call__)(params, (jnp.asarray(x), mask))
        assert out_mask is not None and np.array_equal(out_mask, real)
        x_ref = np.where(real[spread], x, 0.0)
        y_ref = ref.apply({"params": params}, x_ref, mask=np.broadcast_to(real[spread], shape))
        close(np.asarray(y)[real], np.asarray(y_ref)[real])
        for row, length in enumerate(lengths):
            alone = layer(params, jnp.asarray(x[row : row + 1, :length]))
            close(np.asarray(y)[row, :length], alone[0])
        assert np.isfinite(np.asarray(y)).all()


def test_group_norm_of_a_masked_sequence_in_a_model():
    """The pair flows through ``serial``: a convolution over time, GroupNorm, a pool."""
    model = fnn.serial(fnn.KeepMask(fnn.Conv(6, (3,))), fnn.GroupNorm(3), fnn.SequencePool())
    mask = jnp.array([[True] * 5, [True, True, True, False, False]])
    x = rand((2, 5, 2))
    params, state = model.init(KEY, (x, mask))
    y = model(params, (x, mask))
    close(y[1], model(params, x[1:, :3])[0])
    close(y, model(params, (x.at[1, 3:].set(1e4), mask)))


@pytest.mark.parametrize(
    "x, mask, message",
    [
        ((2, 4), (2, 4), r"GroupNorm of a masked sequence needs a channel axis after batch and time, "
                         r"got float32\[2,4\]"),
        ((2, 3, 4), (2, 4), r"GroupNorm expects a mask bool\[2,3\] for the sequence float32\[2,3,4\]"),
    ],
)
def test_group_norm_of_a_masked_sequence_refuses_a_mask_that_does_not_fit(x, mask, message):
    layer = fnn.GroupNorm(num_groups=2)
    with pytest.raises(fnn.ShapeError, match=message):
        layer.init(KEY, (jnp.zeros(x), jnp.ones(mask, bool)))
    params, _ = layer.init(KEY, jnp.zeros((2, 4)))
    with pytest.raises(fnn.ShapeError, match=message):
        layer(params, (jnp.zeros(x), jnp.ones(mask, bool)))
