"""The benchmark command, its FLOP formula, per-backend attention paths and the GPU launcher.

No test asserts a timing: only that the numbers exist, are finite and follow the formula.
"""

import json
import math
import os
import subprocess
import sys
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp
import pytest

from nopejax import experiment
from nopejax.model import attention
from nopejax.model import spec as config_lib
from nopejax.tools import bench
from nopejax.train import efficiency

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import bench_cpu, bench_gpu_1b, tiny  # noqa: E402

KEYS = (
  "tokens_per_s",
  "step_s",
  "compile_s",
  "flops_per_token",
  "mfu",
  "mfu_full_attention",
  "flops_per_token_full_attention",
  "peak_flops",
  "peak_source",
  "peak_memory_bytes",
  "memory_source",
  "attention",
  "temp_bytes",
)


def run(*args, timeout=600):
  proc = subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def bench_tiny(*flags):
  """`python -m nopejax.bench` on configs/tiny.py with these flags."""
  return run("-m", "nopejax.bench", "--config=configs/tiny.py", *flags)


def _model_spec(cfg):
  return experiment.resolve(cfg).model


def last_json(proc):
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_command_on_tiny_prints_every_key():
  result = last_json(
    bench_tiny(
      "--steps=2",
      "--config.model.positions=smollm3",
      "--config.model.num_layers=4",
    )
  )
  for key in KEYS:
    assert key in result, key
  assert result["tokens_per_s"] > 0 and result["step_s"] > 0 and result["compile_s"] > 0
  assert 0 < result["mfu"] < 1 and result["peak_source"] == "measured fp32 matmul"
  assert result["peak_memory_bytes"] > 0 and result["steps"] == 2 and "note" not in result
  assert result["attention"] == [
    "0:rope:reference",
    "1:rope:reference",
    "2:rope:reference",
    "3:nope:reference",
  ]
  cfg = tiny.get_config()
  cfg.model.update(positions="smollm3", num_layers=4)
  spec = _model_spec(cfg)
  assert result["flops_per_token"] == efficiency.flops_per_token(spec, 32)
  # Full attention counts 32 keys per query where the causal count has 16.5 (4 layers).
  full = result["flops_per_token"] + 4 * 12 * spec.num_heads * spec.head_dim * (32 - 16.5)
  assert result["flops_per_token_full_attention"] == pytest.approx(full)
  assert result["mfu_full_attention"] / result["mfu"] == pytest.approx(
    full / result["flops_per_token"]
  )


def test_bf16_on_cpu_says_it_does_not_help():
  proc = bench_tiny(
    "--steps=1",
    "--warmup=1",
    "--config.model.dtype=bfloat16",
  )
  result = last_json(proc)
  assert result["dtype"] == "bfloat16" and result["note"] == bench.CPU_BF16_NOTE
  assert "XLA's CPU dots do not reach AMX" in proc.stdout


def test_decode_bench_against_transformers_generate():
  """`--decode --compare_torch`: both sides' prefill and per-token rates, and greedy tokens equal
  to transformers' generate on the same weights, with a prompt longer than the prefill chunk."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  proc = bench_tiny(
    "--config.model.positions=smollm3",
    "--config.model.num_layers=4",
    "--decode",
    "--compare_torch",
    "--decode_batch=2",
    "--prompt_len=16",
    "--new_tokens=6",
    "--prefill_chunk=8",
  )
  result = last_json(proc)
  for side in (result, result["torch"]):
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "tokens_per_s", "decode_step_s"):
      assert side[key] > 0, key
  assert result["tokens_equal"] == 1.0 and result["prefill_chunk"] == 8
  assert math.isclose(
    result["jax_over_torch"], result["tokens_per_s"] / result["torch"]["tokens_per_s"]
  )
  assert "tokens equal 100.0%" in proc.stdout


def test_compare_torch_reports_both_and_the_ratio():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  proc = bench_tiny(
    "--steps=2",
    "--warmup=1",
    "--compare_torch",
    "--config.model.positions=rope@sliding:8,nope",
    "--peak_flops=1e11",
  )
  result = last_json(proc)
  torch = result["torch"]
  assert torch["tokens_per_s"] > 0 and torch["flops_per_token"] == result["flops_per_token"]
  assert math.isclose(result["jax_over_torch"], result["tokens_per_s"] / torch["tokens_per_s"])
  assert result["peak_source"] == "--peak_flops" and result["peak_flops"] == 1e11
  assert "nopejax/pytorch = " in proc.stdout


def test_long_context_bench_takes_the_flash_path():
  """The README's long-context bench at 8,192 tokens: every layer on the flash path, and the
  process far below the 14.5 GiB that 0.1's blockwise path needed for this step."""
  proc = run(
    "-m",
    "nopejax.bench",
    "--config=configs/long_context.py:seq_len=8192",
    "--steps=1",
    "--warmup=0",
  )
  result = last_json(proc)
  assert [p.rsplit(":", 1)[1] for p in result["attention"]] == ["flash"] * 4
  assert result["peak_memory_bytes"] < 3 * 2**30


def test_flops_per_token_matches_a_hand_count():
  cfg = config_lib.model_config()
  cfg.update(
    vocab_size=20,
    d_model=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    d_ff=64,
    positions="rope@sliding:3,nope",
  )
  spec = config_lib.resolve(cfg)  # head_dim 16
  # Per layer: q 32*2*16 + k 32*1*16 + v 32*1*16 + o 2*16*32 = 3072; SwiGLU 3*32*64 = 6144.
  # Two layers: 18432; output head 32*20 = 640; matmul params 19072, x6 = 114432.
  # Attention at T=8, 12 * N*H = 12 * 32 = 384 per attended key:
  #   sliding 3 attends 1,2,3,3,3,3,3,3 keys (mean 21/8); full causal 1..8 (mean 36/8).
  hand = 6 * 19072 + 384 * (21 / 8) + 384 * (36 / 8)
  assert efficiency.matmul_params(spec) == 19072
  assert efficiency.flops_per_token(spec, 8) == pytest.approx(hand) == 117168
  assert efficiency.attended_keys(spec.layers[0], 2) == 1.5  # a window wider than the row: causal


def test_attended_keys_of_chunks_restart_at_each_boundary():
  from nopejax.model.patterns import LayerType

  # chunk 3 at T=8: keys 1,2,3 | 1,2,3 | 1,2
  assert efficiency.attended_keys(LayerType("rope", "chunked", 3), 8) == 15 / 8
  assert efficiency.attended_keys(LayerType("nope"), 8) == 4.5


@pytest.mark.parametrize(
  "backend,has_bias,length,head_dim,dtype,key_length,documents,window,expected",
  [
    ("cpu", False, 256, 64, jnp.float32, None, True, "full", "reference"),
    ("cpu", True, 256, 64, jnp.float32, None, True, "full", "reference"),
    ("cpu", False, 8192, 64, jnp.float32, None, True, "full", "flash"),
    ("cpu", True, 8192, 64, jnp.float32, None, True, "full", "flash"),
    ("gpu", False, 4096, 128, jnp.bfloat16, None, False, "full", "cudnn"),
    ("gpu", False, 8192, 128, jnp.bfloat16, None, False, "sliding", "cudnn"),
    ("gpu", False, 8192, 128, jnp.bfloat16, None, False, "chunked", "flash"),  # needs a mask
    ("gpu", False, 4096, 128, jnp.bfloat16, None, True, "full", "flash"),  # packed: a mask
    ("gpu", False, 256, 128, jnp.float32, None, False, "full", "flash"),  # cuDNN: fp16/bf16
    ("gpu", False, 256, 256, jnp.bfloat16, None, False, "full", "flash"),  # head_dim > 128
    ("gpu", True, 256, 128, jnp.bfloat16, None, False, "full", "flash"),  # ALiBi/T5: a bias
    ("tpu", False, 256, 128, jnp.bfloat16, None, True, "full", "splash"),
    ("tpu", False, 8192, 128, jnp.float32, None, True, "chunked", "splash"),
    ("tpu", False, 768, 128, jnp.bfloat16, None, True, "full", "flash"),  # block 512 !| 768
    ("tpu", False, 200, 128, jnp.bfloat16, None, True, "full", "flash"),  # not a lane multiple
    ("tpu", False, 256, 64, jnp.bfloat16, None, True, "full", "flash"),  # head_dim < a lane
    ("tpu", True, 256, 128, jnp.bfloat16, None, True, "full", "flash"),
    ("tpu", False, 256, 128, jnp.bfloat16, 1024, True, "full", "flash"),  # KV cache decoding
  ],
)
def test_auto_picks_the_path_per_backend(
  backend, has_bias, length, head_dim, dtype, key_length, documents, window, expected
):
  assert (
    attention.choose(
      "auto",
      has_bias=has_bias,
      length=length,
      flash_above=4096,
      backend=backend,
      head_dim=head_dim,
      dtype=dtype,
      key_length=key_length,
      block_size=512,
      window=window,
      documents=documents,
    )
    == expected
  )


def test_an_explicit_path_is_kept_everywhere():
  for backend in ("cpu", "gpu", "tpu"):
    assert (
      attention.choose("xla", has_bias=True, length=10, flash_above=4, backend=backend) == "xla"
    )


def test_auto_per_layer_of_a_mixed_pattern():
  cfg = config_lib.model_config()
  cfg.update(
    d_model=256,
    num_heads=2,
    num_kv_heads=1,
    num_layers=4,
    dtype="bfloat16",
    positions="rope@sliding:128,nope,alibi,t5",
  )
  spec = config_lib.resolve(cfg)  # head_dim 128
  paths = lambda backend, documents=True: [
    p.rsplit(":", 1)[1] for p in bench.layer_paths(spec, 512, backend, documents)
  ]
  assert paths("tpu") == ["splash", "splash", "flash", "flash"]
  assert paths("gpu", documents=False) == ["cudnn", "cudnn", "flash", "flash"]
  assert paths("gpu") == ["flash"] * 4  # packed rows: jax's cuDNN call would need a dense mask
  assert paths("cpu") == ["reference"] * 4
  assert bench.layer_paths(spec, 512, "tpu")[0] == "0:rope@sliding:128:splash"


def test_splash_lowers_for_a_tpu_topology():
  """Causal, sliding and chunked NoPE/RoPE layers on splash, an ALiBi layer beside them."""
  pytest.importorskip("libtpu")
  code = """
from absl import logging
from nopejax import experiment
from nopejax.tools import aot
from configs import tiny
c = tiny.get_config()
c.model.update(head_dim=128, num_kv_heads=2, num_layers=4, block_size=128,
               positions="rope@sliding:128,nope,rope@chunked:128,alibi")
c.data.seq_len = 256
c.mesh.update(data=2, tensor=2)
compiled = aot.compile_train_step(experiment.resolve(c), aot.topology_devices("v5e:2x2"))
print(compiled.as_text().count("tpu_custom_call"))
"""
  proc = run("-c", code)
  assert int(proc.stdout.strip().splitlines()[-1]) > 0  # the Pallas kernels are in the program


def test_bench_gpu_dry_run_prints_the_bench_command():
  proc = subprocess.run(
    ["bash", "launch/bench_gpu.sh", "--dry-run", "--steps=5"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout.strip()
  assert "-m nopejax.bench" in out and "configs/bench_gpu_1b.py" in out
  assert out.endswith("--steps=5") and "CUDA_VISIBLE_DEVICES=" in out


def test_gpu_and_cpu_bench_configs_resolve():
  exp = experiment.resolve(bench_gpu_1b.get_config())
  spec = exp.model
  assert 0.9e9 < efficiency.matmul_params(spec) - spec.d_model * spec.vocab_size < 1.1e9
  paths = [p.rsplit(":", 1)[1] for p in bench.layer_paths(spec, 4096, "gpu", exp.data.pack)]
  assert paths == ["cudnn"] * 16  # unpacked synthetic rows: no mask needed
  cpu = _model_spec(bench_cpu.get_config())
  assert (
    cpu.num_layers,
    cpu.d_model,
    cpu.num_heads,
    cpu.num_kv_heads,
    cpu.d_ff,
    cpu.vocab_size,
  ) == (4, 256, 4, 2, 1024, 256)


def test_cpu_devices_of_one_process_share_its_peak():
  """Host devices split one process's cores: the peak counts processes, not CPU devices; chips
  count each device."""
  device = lambda platform, process, kind: types.SimpleNamespace(
    platform=platform, process_index=process, device_kind=kind
  )
  cpus = [device("cpu", p, "cpu") for p in (0, 0, 0, 0, 1, 1, 1, 1)]
  assert efficiency.peak_flops_total(cpus, given=1e11) == (2e11, "--peak_flops")
  chips = [device("tpu", 0, "TPU v5 lite")] * 4
  assert efficiency.peak_flops_total(chips) == (4 * 197e12, "table:v5e bf16")
