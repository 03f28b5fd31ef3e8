"""What gradient checkpointing saves: the compiled programs' memory analysis for the
transformer language model with and without ``remat`` on its blocks.

Two figures per variant, both read from XLA's ``memory_analysis()`` of the compiled
program (no timing, so the figures do not depend on machine load):

- saved for backward: the output of the compiled forward pass of ``jax.vjp``, traced
  with the gradient rules a train step takes (inside ``fnn.reverse_mode_only``) -- every
  value the backward pass needs (activations, and the parameters themselves);
- train-step temporaries: the scratch memory of the whole compiled train step
  (forward, backward, adam update), as the backend's buffer assignment plans it. Here
  ``Remat`` starts its backward pass from values tied to the cotangent (inside
  ``fnn.reverse_mode_only``): with ``jax.checkpoint`` alone XLA's CPU backend merges the
  recomputation with the forward pass and plans as much as without it (see
  ``fnn.core._recomputed``).

    .venv/bin/python -m benchmarks.memory
    .venv/bin/python -m benchmarks.memory --d-model 512 --layers 8 --seq 512 --batch 8
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import fnn


def measure(remat: bool, args: argparse.Namespace) -> dict[str, float]:
    lm = fnn.TransformerLM(vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads,
                           num_layers=args.layers, max_len=args.seq, remat=remat)
    ids = jax.ShapeDtypeStruct((args.batch, args.seq), jnp.int32)
    params = jax.eval_shape(lambda: lm.init(jax.random.key(0), ids)[0])

    def loss(p, x):
        return fnn.losses.softmax_cross_entropy(lm(p, x), x)

    with fnn.reverse_mode_only():  # the gradient rules a train step takes (fnn's own)
        forward = jax.jit(lambda p, x: jax.vjp(lambda q: loss(q, x), p)[1]).lower(params, ids).compile()
    optimizer = optax.adam(1e-3)
    state = jax.eval_shape(lambda: fnn.init_train_state(lm, optimizer, jax.random.key(0), ids))
    step = fnn.make_train_step(lm, optimizer, fnn.losses.softmax_cross_entropy)
    whole = step.lower(state, (ids, ids)).compile()
    mib = 2.0**20
    return {
        "params MiB": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)) / mib,
        "saved for backward MiB": forward.memory_analysis().output_size_in_bytes / mib,
        "train-step temporaries MiB": whole.memory_analysis().temp_size_in_bytes / mib,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=96)
    args = parser.parse_args(argv)
    print(f"TransformerLM d_model {args.d_model}, {args.heads} heads, {args.layers} layers, "
          f"seq {args.seq}, batch {args.batch}, vocab {args.vocab}; {jax.devices()[0].platform}")
    rows = {"plain": measure(False, args), "remat": measure(True, args)}
    names = list(rows["plain"])
    print("| variant | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for variant, row in rows.items():
        print(f"| {variant} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |")
    saved = rows["plain"]["saved for backward MiB"] - rows["remat"]["saved for backward MiB"]
    print(f"remat keeps {saved:.2f} MiB less for the backward pass "
          f"({rows['remat']['saved for backward MiB'] / rows['plain']['saved for backward MiB']:.2f}x); "
          f"the train step plans {rows['remat']['train-step temporaries MiB']:.2f} MiB of temporaries "
          f"against {rows['plain']['train-step temporaries MiB']:.2f} "
          f"({rows['remat']['train-step temporaries MiB'] / rows['plain']['train-step temporaries MiB']:.2f}x)")


if __name__ == "__main__":
    main()
