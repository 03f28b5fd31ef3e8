"""The benchmark suite builds and runs: every framework's model has the architecture's
parameter count, and every JAX framework's step compiles and trains (timings are not
checked: they belong to the benchmark, not the tests)."""

from __future__ import annotations

import json
import math

import jax
import pytest

from benchmarks import suite
from benchmarks.frameworks import JAX_FRAMEWORKS, PARAM_COUNTS, VARIANTS
from benchmarks.models import SPECS, batch_for, expected_params
from tests.compiles import counting_compiles

# Compiling is what costs: every framework on the small MLP, and fnn on every model, so
# that every framework and every model runs at least once.
RUNS = {"mlp-small": list(JAX_FRAMEWORKS), **{name: ["fnn"] for name in SPECS if name != "mlp-small"}}


@pytest.mark.parametrize("name", list(SPECS))
def test_every_framework_has_the_models_parameter_count(name):
    batch = batch_for(name)
    counts = {f: count(name, batch) for f, count in PARAM_COUNTS.items()}
    assert set(counts) >= {"raw jax", "fnn", "flax linen", "flax nnx", "equinox", "haiku"}
    assert set(counts.values()) == {expected_params(name)}, counts


@pytest.mark.parametrize("name", list(RUNS))
def test_quick_rows_run_and_train(name):
    frameworks = {f: JAX_FRAMEWORKS[f] for f in RUNS[name]}
    rows = suite.bench_model(name, frameworks, rounds=1, steps=1, analysis=False)
    assert [r.framework for r in rows] == list(frameworks)
    for row in rows:
        assert row.params == expected_params(name)
        assert row.rate > 0 and row.first > 0
    if "raw jax" in frameworks:
        assert next(r for r in rows if r.framework == "raw jax").vs_raw == 1.0
        assert all(math.isfinite(r.vs_raw) for r in rows)


def test_training_lowers_the_loss_alike():
    """A few steps on one batch lower the loss in every framework, from the same start
    value (the same loss of ~uniform predictions)."""
    name = "mlp-small"
    losses = {}
    for framework in ("raw jax", "fnn"):
        bench = JAX_FRAMEWORKS[framework](name, batch_for(name))
        state, first = bench.step(bench.state, bench.batch)
        first = float(first)
        for _ in range(5):
            state, loss = bench.step(state, bench.batch)
        losses[framework] = (first, float(loss))
    for first, last in losses.values():
        assert last < first
    assert max(f for f, _ in losses.values()) - min(f for f, _ in losses.values()) < 0.5


def test_the_jax_rules_variant_takes_the_same_steps():
    """The opt-in row differs from fnn's only in the weight-gradient rule: the same
    losses, step after step, and a different program."""
    name = "transformer"
    benches = {f: {**JAX_FRAMEWORKS, **VARIANTS}[f](name, batch_for(name)) for f in ("fnn", "fnn (jax rules)")}
    losses, texts = {}, {}
    for framework, bench in benches.items():
        state, out = bench.state, []
        for _ in range(3):
            state, loss = bench.step(state, bench.batch)
            out.append(float(loss))
        losses[framework] = out
        texts[framework] = bench.lower(state, bench.batch).as_text()
    assert losses["fnn"] == pytest.approx(losses["fnn (jax rules)"], rel=1e-4)
    assert texts["fnn"] != texts["fnn (jax rules)"]


def test_variant_rows_run_only_when_named(monkeypatch):
    seen = []
    monkeypatch.setattr(suite, "bench_model", lambda name, frameworks, *a, **k: seen.append(list(frameworks)) or [])
    suite.main(["--models", "mlp-small", "--quick", "--no-torch"])
    assert not set(seen[0]) & set(VARIANTS)
    suite.main(["--models", "mlp-small", "--quick", "--frameworks", "fnn (jax rules)"])
    assert seen[1] == ["raw jax", "fnn (jax rules)"]


@pytest.mark.parametrize("option", ["--rounds", "--first-rounds"])
def test_the_suite_refuses_fewer_than_one_round(option, capsys):
    with pytest.raises(SystemExit):
        suite.main(["--models", "mlp-small", "--no-torch", option, "0"])
    assert f"{option} must be at least 1" in capsys.readouterr().err


@pytest.fixture
def without_haiku(monkeypatch):
    """``benchmarks.frameworks`` and the suite as on a machine without Haiku installed."""
    import importlib

    from benchmarks import frameworks

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "haiku" else find_spec(name, *a))
    try:
        yield importlib.reload(frameworks), importlib.reload(suite)
    finally:
        monkeypatch.undo()
        importlib.reload(frameworks)
        importlib.reload(suite)


def test_a_peer_not_installed_is_left_out_with_a_note(without_haiku, monkeypatch, capsys):
    frameworks, reloaded = without_haiku
    assert frameworks.MISSING == ["haiku"]
    assert "haiku" not in frameworks.JAX_FRAMEWORKS and "haiku" not in frameworks.PARAM_COUNTS
    assert "equinox" in frameworks.JAX_FRAMEWORKS and "haiku" in frameworks.KNOWN
    seen = []
    monkeypatch.setattr(reloaded, "bench_model", lambda name, fws, *a, **k: seen.append(list(fws)) or [])
    reloaded.main(["--models", "mlp-small", "--quick", "--no-torch"])
    out = capsys.readouterr().out
    assert "not installed, so their rows are skipped: haiku" in out and "haiku 0" not in out
    assert "haiku" not in seen[0] and "equinox" in seen[0]
    with pytest.raises(SystemExit):
        reloaded.main(["--models", "mlp-small", "--quick", "--frameworks", "haiku"])
    assert "not available here: haiku" in capsys.readouterr().err


def test_pytorch_trains_where_jax_does(monkeypatch):
    torch = pytest.importorskip("torch")
    from benchmarks.frameworks import torch_models

    assert torch_models.device().type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_models.device().type == "cpu"  # JAX is on the CPU here
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert torch_models.device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_models.device().type == "cpu"


def test_the_peak_is_measured_with_a_product_that_fills_the_device(monkeypatch):
    assert suite.peak_size() == 2048
    assert suite.peak_gflops(size=256, repeats=2) > 0
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert suite.peak_size() == 8192


def test_analysis_reports_memory_and_flops():
    bench = JAX_FRAMEWORKS["fnn"]("mlp-small", batch_for("mlp-small"))
    mib, gflop = suite.analyse(bench)
    state_mib = 3 * expected_params("mlp-small") * 4 / 2**20  # params and adam's two moments
    assert mib > state_mib
    # forward and backward of the dense layers: about 6 flops per weight per example
    assert 0.5 < gflop / (6 * expected_params("mlp-small") * SPECS["mlp-small"].batch / 1e9) < 2


def test_tables_list_every_row():
    rows = [suite.Row("mlp-small", f, 1, 10.0, 1.0) for f in ("raw jax", "fnn")]
    assert suite.markdown_table(rows).count("\n") == 3
    assert "fnn" in suite.text_table(rows)
    assert jax.devices()  # the suite runs on the default backend


def test_first_calls_recompile_each_round_and_leave_every_bench_warm():
    batch = batch_for("mlp-small")
    benches = {f: JAX_FRAMEWORKS[f]("mlp-small", batch) for f in ("raw jax", "fnn")}
    firsts = suite.first_calls(benches, rounds=2)
    assert set(firsts) == set(benches) and all(t > 0 for t in firsts.values())
    assert int(benches["fnn"].state.step) == 3  # two timed first calls, then one to compile again

    def compiles(bench):
        with counting_compiles() as compiled:
            bench.state, loss = bench.step(bench.state, bench.batch)
            bench.sync(loss)
        return len(compiled)

    assert {f: compiles(b) for f, b in benches.items()} == {"raw jax": 0, "fnn": 0}  # warm
    jax.clear_caches()
    assert compiles(benches["fnn"]) > 0  # what first_calls relies on: clearing recompiles


def test_host_memory_measures_a_process_per_setting():
    from benchmarks import host_memory

    one = host_memory.child("fnn", "mlp-small", steps=2, warmup=1, min_seconds=0.0)
    assert one["ms"] > 0 and one["faults"] >= 0 and one["rss"] > 0
    other = host_memory.measure("huge pages", "raw jax", "mlp-small", steps=2, warmup=1)  # a fresh process
    assert set(other) == {"ms", "faults", "rss"}
    text = host_memory.table({("mlp-small", "fnn", "system"): [one], ("mlp-small", "fnn", "huge pages"): [other]})
    rows = text.splitlines()[2:]
    assert [r.split(" | ")[2] for r in rows] == ["system", "huge pages"]
    assert rows[0].split(" | ")[4] == "1.00"


def test_dropout_variant_patches_only_while_traced():
    """``benchmarks.dropout``: fnn draws its masks with Threefry written out; the variant
    draws them with ``jax.random.bernoulli``, only while traced."""
    import dataclasses

    import fnn
    from benchmarks import dropout
    from benchmarks.frameworks.fnn_models import model

    net = dataclasses.replace(model("transformer"), dropout=0.1)
    x, y = batch_for("transformer")
    params, _ = net.init(jax.random.key(0), x)

    def jaxpr():
        def loss(p):
            return fnn.losses.softmax_cross_entropy(net(p, x, key=jax.random.key(1), train=True), y)

        with fnn.reverse_mode_only():
            return str(jax.make_jaxpr(lambda p: loss(p))(params))  # a fresh trace each time

    shipped = jaxpr()
    with dropout._bernoulli_masks(True):
        patched = jaxpr()
    assert "name=_bernoulli" not in shipped and "name=_bernoulli" in patched
    assert jaxpr() == shipped  # the patch is gone


def test_linen_dropout_transformer_trains_with_a_key_per_step():
    from benchmarks.frameworks import linen

    bench = linen.make("transformer", batch_for("transformer"), dropout=0.1)
    assert bench.params == expected_params("transformer")
    state, first = bench.step(bench.state, bench.batch)
    state, second = bench.step(state, bench.batch)
    assert math.isfinite(float(first)) and math.isfinite(float(second))


@pytest.mark.parametrize("name, rules, patched", [("spoken-commands", 2, 1), ("segmenter", 3, 0)])
def test_strided_conv_variant_takes_xlas_convolution_only_for_strides_while_traced(name, rules, patched):
    """``benchmarks.strided_conv``: in fnn's step the convolutions where a part of fnn's
    rule applies take it (the spoken-commands model's first, with one input channel, and
    its classifier's product; the segmenter's first and its two transposed ones: its
    second has 16 input channels); the variant gives the strided and transposed ones
    XLA's, only while traced."""
    import fnn
    from benchmarks import strided_conv

    model = strided_conv.MODELS[name]
    net = model.fnn()
    x, y = model.batch(0)
    params, _ = net.init(jax.random.key(0), x)

    def count():
        def loss(p):
            return fnn.losses.softmax_cross_entropy(net(p, x), y)

        with fnn.reverse_mode_only():
            return str(jax.make_jaxpr(lambda p: loss(p))(params)).count("custom_vjp_call")

    assert count() == rules
    with strided_conv._xla_strided(True):
        assert count() == patched
    assert count() == rules  # the patch is gone


@pytest.mark.parametrize("framework", ["raw jax", "fnn", "flax linen", "pytorch (eager)"])
@pytest.mark.parametrize("name", ["spoken-commands", "segmenter"])
def test_strided_conv_peers_have_fnns_parameters_and_train(name, framework):
    from benchmarks import strided_conv

    model = strided_conv.MODELS[name]
    found = strided_conv.frameworks(model)
    if framework not in found:
        pytest.skip("torch is not installed (optional for the benchmarks)")
    data = model.batch(0)
    bench = found[framework](data)
    assert bench.params == model.params
    losses = []
    for _ in range(6):
        bench.state, loss = bench.step(bench.state, bench.batch)
        losses.append(float(bench.sync(loss)))
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0]


def _small(case):
    """A case of ``benchmarks.conv_layers`` at a size a test computes quickly (10 x 10 keeps
    the odd "SAME" pad of a stride-2 convolution at the end, as 56 x 56 has it)."""
    import dataclasses

    return dataclasses.replace(case, x=(2, *(10,) * len(case.kernel), 4), features=6)


@pytest.mark.parametrize("name, rule", [
    ("downsample-56", True), ("projection-56", False), ("same-56", True), ("dilated-32", True),
    ("upsample-28", True), ("stem-7x7", False), ("audio-1d", True), ("audio-1d-up", True),
])
def test_conv_layers_variants_agree_with_raw_jax(name, rule):
    """``benchmarks.conv_layers``: fnn's layer (traced inside ``reverse_mode_only``, so its
    convolution takes fnn's rule where a part of it applies: not for a 1 x 1 kernel's 4
    products to 6 channels, nor for 49 offsets at stride 2) gives raw JAX's loss and
    gradients, and PyTorch's convolution (padded and laid out as the benchmark does) the
    same loss."""
    import numpy as np

    import fnn
    from benchmarks import conv_layers

    case = _small(conv_layers.CASES[name])
    data = case.data()
    found = conv_layers.variants(case)
    outputs = {}
    for variant, make in found.items():
        bench = make(data)
        assert bench.params == data[1]["w"].size + data[1]["b"].size
        outputs[variant] = bench.step(bench.state, bench.batch)[1]
    (loss, grads), (fnn_loss, fnn_grads) = outputs["raw jax"], outputs["fnn"]
    np.testing.assert_allclose(fnn_loss, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(fnn_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with fnn.reverse_mode_only():  # as the fnn variant is traced: the layer takes fnn's rule
        assert ("custom_vjp_call" in str(jax.make_jaxpr(case.layer())(data[1], data[0]))) == rule
    if "pytorch (eager)" in outputs:
        np.testing.assert_allclose(outputs["pytorch (eager)"][0].item(), loss, rtol=1e-5)


def test_conv_layers_prints_a_row_per_case_and_variant(monkeypatch, capsys):
    from benchmarks import conv_layers

    monkeypatch.setattr(conv_layers, "CASES", {"small": _small(conv_layers.CASES["downsample-56"])})
    conv_layers.main(["--rounds", "1", "--calls", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| small |")]
    assert [row.split(" | ")[1] for row in rows] == list(conv_layers.variants(conv_layers.CASES["small"]))
    assert rows[0].split(" | ")[3] == "1.00"  # raw JAX's speed against itself
    with pytest.raises(SystemExit):
        conv_layers.main(["--rounds", "0"])


@pytest.mark.parametrize("name, rule", [("suite", True), ("few-keys", False), ("keys-128-d-64", True)])
def test_attention_layers_variants_agree_with_raw_jax(name, rule):
    """``benchmarks.attention_layers`` at a smaller size (fewer queries, a smaller batch,
    the same keys per head dimension): fnn's attention, taking the rule only with twice as
    many keys as the head dimension, and the rule called alone give raw JAX's loss and
    gradients, and PyTorch's attention the same loss."""
    import dataclasses

    import numpy as np

    import fnn
    from benchmarks import attention_layers

    case = attention_layers.CASES[name]
    case = dataclasses.replace(case, batch=2, tq=min(case.tq, case.tk))
    data = case.data()
    outputs = {}
    for variant, make in attention_layers.variants(case).items():
        bench = make(data)
        outputs[variant] = bench.step(bench.state, bench.batch)[1]
    loss, grads = outputs["raw jax"]
    for variant in ("fnn", "fnn's rule"):
        np.testing.assert_allclose(outputs[variant][0], loss, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(outputs[variant][1]), jax.tree.leaves(grads)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    q, (k, v) = data
    with fnn.reverse_mode_only():  # as the fnn variant is traced
        jaxpr = jax.make_jaxpr(lambda q: fnn.dot_product_attention(q, k, v, causal=case.causal))(q)
    assert ("custom_vjp_call" in str(jaxpr)) == rule
    if "pytorch (eager)" in outputs:
        np.testing.assert_allclose(outputs["pytorch (eager)"][0].item(), loss, rtol=1e-5)


def test_attention_layers_prints_a_row_per_case_and_variant(capsys):
    from benchmarks import attention_layers

    attention_layers.main(["--cases", "few-keys", "--rounds", "1", "--calls", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| few-keys |")]
    assert [row.split(" | ")[1] for row in rows] == list(attention_layers.variants(attention_layers.CASES["few-keys"]))
    assert rows[0].split(" | ")[3] == "1.00"
    with pytest.raises(SystemExit):
        attention_layers.main(["--cases", "nothing"])


def test_input_pipeline_measures_the_wait_and_the_cost_against_one_batch(monkeypatch, capsys):
    import fnn
    from benchmarks import input_pipeline
    from experiments import digits

    small = digits.Config(model="mlp", width=16, train=fnn.pipeline.TrainConfig(epochs=1))
    monkeypatch.setattr(input_pipeline, "cases", lambda quick: {"digits (mlp)": (digits.run, small),
                                                                "left out": (None, None)})
    input_pipeline.main(["--rounds", "1", "--cases", "mlp"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| digits")]
    assert len(rows) == 1
    cells = rows[0].strip("| ").split(" | ")
    assert cells[1] == "20"  # 1,293 training digits in batches of 64
    seconds, wait, fraction, alone = float(cells[2]), float(cells[3]), float(cells[4][:-1]), float(cells[5])
    assert 0 <= wait < seconds and 0 <= fraction < 100 and alone > 0
    assert fnn.loop.Prefetch is fnn.data.Prefetch  # the stand-in is gone after the run
    with pytest.raises(SystemExit):
        input_pipeline.main(["--rounds", "0"])


def test_one_batch_hands_the_first_batch_to_every_step():
    import numpy as np

    import fnn
    from benchmarks.input_pipeline import OneBatch

    data = fnn.data.loader((np.arange(10.0, dtype=np.float32),), 2, seed=0, epochs=2)
    batches = list(OneBatch(data, state={"next_index": 3}))
    assert len(batches) == 7 and all(b is batches[0] for b in batches)
    np.testing.assert_array_equal(batches[0][0], data[0][0])


def test_the_gpu_script_keeps_each_parts_results_and_fails_when_one_part_fails(tmp_path):
    """benchmarks/gpu.sh on this CPU, with small options: the device check is refused its
    options (the check itself is tested in tests/test_device_check.py), so the script ends
    with status 1, and still runs the suite and the MFU part and keeps their logs and results
    in $OUT."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "CHECK_ARGS": "--steps 1",
           "SUITE_ARGS": "--quick --models mlp-small --no-torch",
           "MFU_ARGS": "--d-model 32 --heads 2 --layers 1 --mlp 64 --vocab 64 --seq 16 --batch 2 --rounds 1 "
                       "--steps 1 --dtype float32 --peak-tflops 1"}
    done = subprocess.run(["bash", "benchmarks/gpu.sh"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == {"machine.txt", "device_check.log", "suite.log", "suite.md",
                                                   "mfu.log", "mfu.json"}
    assert "--steps must be at least 2" in (tmp_path / "device_check.log").read_text()
    assert "== device_check exited with 2" in done.stdout
    assert "| mlp-small | fnn |" in (tmp_path / "suite.md").read_text()
    assert "MFU " in (tmp_path / "mfu.log").read_text()
    assert json.loads((tmp_path / "mfu.json").read_text())["size"]["d_model"] == 32
    assert "== suite exited" not in done.stdout and "== mfu exited" not in done.stdout
    assert "== mfu_cudnn: skipped (cuDNN's attention needs a GPU)" in done.stdout


def test_the_markdown_table_is_written_after_each_model(monkeypatch, tmp_path):
    """A run cut short (a time limit, say) keeps the table of the models it finished."""
    table = tmp_path / "table.md"

    def bench_model(name, frameworks, *args, **kwargs):
        if name == "lenet":
            raise KeyboardInterrupt
        return [suite.Row(name, f, 1, 10.0, 1.0) for f in frameworks]

    monkeypatch.setattr(suite, "bench_model", bench_model)
    with pytest.raises(KeyboardInterrupt):
        suite.main(["--models", "mlp-small", "lenet", "--quick", "--no-torch", "--frameworks", "raw jax", "fnn",
                    "--markdown", str(table)])
    text = table.read_text()
    assert "| mlp-small | fnn |" in text and "lenet" not in text


def test_the_work_of_a_program_with_a_loop_is_left_out():
    """XLA's cost analysis counts a loop's body once: 25 products in a lax.map counted as one."""
    import jax.numpy as jnp

    x, g = jnp.ones((25, 64, 6)), jnp.ones((25, 64, 16))
    looped = jax.jit(lambda x, g: jax.lax.map(lambda a: a[0].T @ a[1], (x, g))).lower(x, g).compile()
    whole = jax.jit(lambda x, g: jnp.einsum("oni,noj->oij", x, jnp.swapaxes(g, 0, 1))).lower(x, g).compile()
    assert math.isnan(suite.plan_and_work(looped)[1])
    assert suite.plan_and_work(whole)[1] == pytest.approx(2 * 25 * 64 * 6 * 16 / 1e9, rel=0.1)


def test_program_fingerprints_are_stable_and_tell_programs_apart():
    from benchmarks import programs

    once, again = programs.fingerprint("mlp-small"), programs.fingerprint("mlp-small")
    assert once == again and once != programs.fingerprint("mlp-small", 2)
