"""Property tests: random stacks of layers init and apply with the shapes ``summary`` predicts."""

import jax
import jax.numpy as jnp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fnn

KEY = jax.random.key(0)

# Layers that keep a [batch, height, width, channels] image an image.
image_layers = st.one_of(
    st.builds(lambda f, k: fnn.Conv(f, (k, k)), st.integers(1, 4), st.integers(1, 3)),
    st.builds(lambda f: fnn.Conv(f, (3, 3), strides=2), st.integers(1, 4)),
    st.builds(lambda f: fnn.ConvTranspose(f, (2, 2), strides=2), st.integers(1, 3)),
    st.just(fnn.MaxPool((2, 2), padding="SAME")),
    st.just(fnn.AvgPool((2, 2), strides=(1, 1), padding="SAME")),
    st.just(fnn.BatchNorm()),
    st.just(fnn.GroupNorm(num_groups=1)),
    st.sampled_from([fnn.relu, fnn.tanh, fnn.sigmoid, fnn.gelu]),
    st.just(fnn.Dropout(0.25)),
)
# Layers on [batch, features].
vector_layers = st.one_of(
    st.builds(fnn.Dense, st.integers(1, 6)),
    st.just(fnn.LayerNorm()),
    st.just(fnn.RMSNorm()),
    st.sampled_from([fnn.relu, fnn.silu, fnn.softplus]),
    st.builds(lambda f: fnn.residual(fnn.Dense(f), fnn.relu, fnn.Dense(f)), st.integers(1, 4)).map(
        lambda r: fnn.serial(fnn.Dense(r.body.layers[0].features), r)
    ),
    st.builds(
        lambda a, b: fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.Dense(a), fnn.Dense(b)), fnn.fan_in_concat()),
        st.integers(1, 3), st.integers(1, 3),
    ),
)


@st.composite
def models(draw):
    conv_part = draw(st.lists(image_layers, max_size=4))
    dense_part = draw(st.lists(vector_layers, max_size=4))
    nested = draw(st.booleans())
    tail = fnn.serial(*dense_part, fnn.Dense(draw(st.integers(1, 5))))
    if nested:
        return fnn.serial(features=fnn.serial(*conv_part, fnn.Flatten()), head=tail)
    return fnn.serial(*conv_part, fnn.Flatten(), *tail.layers)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=models(), batch=st.integers(1, 3), size=st.integers(4, 9), channels=st.integers(1, 3))
def test_random_stacks_apply_with_the_shapes_summary_predicts(model, batch, size, channels):
    x = jax.random.normal(KEY, (batch, size, size, channels))
    params, state = model.init(KEY, x)
    report = fnn.summary(model, jax.ShapeDtypeStruct(x.shape, x.dtype))
    y, new_state = model.apply(params, state, x, key=jax.random.key(1), train=True)
    root = report.nodes[0]
    assert (y.shape, y.dtype) == (root.output.shape, root.output.dtype)
    assert report.total_params == sum(p.size for p in jax.tree.leaves(params))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    # Each top-level child's predicted output is what the model up to that child computes
    # (traced for its shapes: the whole model ran above).
    by_path = {node.path: node.output for node in report.nodes}
    for i, name in enumerate(model.names):
        prefix = fnn.Serial(model.layers[: i + 1], model.names[: i + 1])
        h, _ = jax.eval_shape(prefix.apply, params, state, x)
        predicted = by_path[(name,)]
        assert jax.tree.map(lambda a: (a.shape, a.dtype), h) == jax.tree.map(
            lambda a: (a.shape, a.dtype), predicted
        )
    assert bool(jnp.all(jnp.isfinite(y)))
