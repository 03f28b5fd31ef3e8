"""benchmarks.mfu: the model FLOPs it counts (against a count by hand and XLA's own), the
sizes it refuses, and a CPU-sized run end to end (timings are the benchmark's, not
checked here)."""

from __future__ import annotations

import json

import pytest

from benchmarks import mfu

SMALL = mfu.Size(d_model=128, heads=2, layers=2, mlp=512, vocab=512, seq=128, batch=2)


def test_model_flops_counts_the_products_of_forward_and_backward():
    size = mfu.Size(d_model=8, heads=2, layers=3, mlp=32, vocab=10, seq=5, batch=2)
    # per token and block: q, k, v, out (4 x 8 x 8) and the MLP (2 x 8 x 32); the head 8 x 10;
    # attention: a query reaches (5 + 1) / 2 keys on average, two products of 2 x 8 a key
    per_token = 3 * (4 * 64 + 2 * 256) + 80
    attention = 3 * 2 * (2 * 8 * 3)
    assert mfu.model_flops(size) == 3 * (2 * per_token + attention) * 10


@pytest.mark.parametrize("remat", [False, True])
def test_model_flops_are_xlas_count_without_what_the_model_does_not_count(remat):
    """XLA counts the layer norms, softmax, GELU and adam on top (a few percent at this size),
    and with remat the forward pass made again in the backward pass."""
    result = mfu.measure(SMALL, "float32", remat=remat, rounds=1, steps=1, peak_tflops=1.0, log=lambda _: None)
    assert result.model_gflop == pytest.approx(mfu.model_flops(SMALL) / 1e9)
    ratio = result.xla_gflop / result.model_gflop
    assert (1.15 < ratio < 1.5) if remat else (1.0 < ratio < 1.15), ratio
    assert result.params == 512 * 128 + 128 * 128 + 2 * (4 * (128 * 128 + 128) + 2 * 2 * 128 + 128 * 512
                                                           + 512 + 512 * 128 + 128) + 2 * 128 + 128 * 512 + 512
    assert result.mfu == pytest.approx(result.model_gflop * result.steps_per_s / 1e3)
    assert result.peak_source == "given" and result.mib > 0 and result.steps_per_s > 0


@pytest.mark.parametrize("fields, message", [
    ({"d_model": 0}, "Size.d_model must be a positive int, got 0"),
    ({"batch": 2.5}, "Size.batch must be a positive int, got 2.5"),
    ({"d_model": 130, "heads": 4}, "d_model 130 is not divisible by heads 4"),
])
def test_sizes_are_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        mfu.Size(**fields)


def test_measure_refuses_an_unknown_dtype_and_no_rounds():
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16, got 'int8'"):
        mfu.measure(SMALL, "int8")
    with pytest.raises(ValueError, match="rounds and steps must be at least 1"):
        mfu.measure(SMALL, "float32", rounds=0)


def test_main_runs_a_small_bfloat16_size_and_writes_its_table_and_json(tmp_path, capsys):
    md, js = tmp_path / "mfu.md", tmp_path / "mfu.json"
    result = mfu.main(["--d-model", "64", "--heads", "2", "--layers", "1", "--mlp", "128", "--vocab", "128",
                       "--seq", "32", "--batch", "2", "--rounds", "1", "--steps", "1", "--peak-tflops", "0.5",
                       "--markdown", str(md), "--json", str(js)])
    out = capsys.readouterr().out
    assert result.dtype == "bfloat16" and "MFU " in out and "peak: given" in out
    assert md.read_text().count("\n") == 3 and "| bfloat16 | fnn | 64 | 2 | 1 | 128 | 128 | 32 | 2 | no |" in md.read_text()
    saved = json.loads(js.read_text())
    assert saved["size"]["d_model"] == 64 and saved["mfu"] == pytest.approx(result.mfu)
    assert saved["peak_gflops"] == 500.0


@pytest.mark.parametrize("argv, message", [
    (["--heads", "3"], "d_model 1024 is not divisible by heads 3"),
    (["--rounds", "0"], "--rounds and --steps must be at least 1"),
    (["--dtype", "int8"], "invalid choice: 'int8'"),
    (["--d-model", "32", "--heads", "2", "--layers", "1", "--mlp", "32", "--vocab", "32", "--seq", "8", "--batch", "1",
      "--attention", "cudnn"], "implementation='cudnn' runs on a GPU; the default backend is cpu"),
])
def test_main_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        mfu.main(argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err
