"""python -m nopejax.bench --config=configs/X.py [--steps=N] [--compare_torch]

Times the config's real jitted train step on synthetic tokens and prints one final JSON line:
`tokens_per_s`, `step_s` (median), `compile_s`, `flops_per_token`, `mfu` (masked attention not
counted: causal halved) and `mfu_full_attention` (every key counted), peak memory and the
attention path of every layer (nopejax/tools/bench.py says how FLOPs are counted).
`--compare_torch` also trains transformers' SmolLM3 in PyTorch, steps interleaved with ours.
`--decode` times greedy KV-cache generation instead (prefill and per-token rates; with
`--compare_torch`, against transformers' `generate` on the same weights: tools/bench_decode.py).
"""

import json

from absl import app, flags
from ml_collections import config_flags

from nopejax import cli, experiment
from nopejax.tools import bench, bench_decode

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (configs/X.py[:arg]).", lock_config=True
)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps (after --warmup untimed ones).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_PEAK = flags.DEFINE_float(
  "peak_flops",
  None,
  "Peak FLOP/s of one device for the MFU; default: "
  "the bf16 table for TPUs and GPUs, a measured fp32 matmul on CPU.",
)
_TORCH = flags.DEFINE_bool(
  "compare_torch",
  False,
  "Also train transformers' SmolLM3 in PyTorch, steps interleaved with ours, and report the ratio.",
)
_DECODE = flags.DEFINE_bool(
  "decode", False, "Time greedy KV-cache generation (prefill and decode) instead of training."
)
_DECODE_BATCH = flags.DEFINE_integer("decode_batch", 8, "--decode: prompts per batch.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 128, "--decode: tokens per prompt.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "--decode: tokens generated per prompt.")
_PREFILL_CHUNK = flags.DEFINE_integer(
  "prefill_chunk", bench_decode.generate_lib.PREFILL_CHUNK, "--decode: prompt tokens per pass."
)


def _decode(exp):
  result = bench_decode.run(
    exp,
    batch_size=_DECODE_BATCH.value,
    prompt_len=_PROMPT_LEN.value,
    new_tokens=_NEW_TOKENS.value,
    prefill_chunk=_PREFILL_CHUNK.value,
    compare_torch=_TORCH.value,
  )
  sides = [("nopejax", result)] + ([("pytorch", result["torch"])] if "torch" in result else [])
  for name, r in sides:
    print(
      f"{name}: {r['tokens_per_s']:,.0f} tokens/s generated, prefill "
      f"{r['prefill_tokens_per_s']:,.0f} tokens/s ({r['prefill_s'] * 1e3:.1f} ms), decode "
      f"{r['decode_tokens_per_s']:,.0f} tokens/s ({r['decode_step_s'] * 1e3:.2f} ms a step)"
    )
  if "torch" in result:
    print(
      f"nopejax/pytorch = {result['jax_over_torch']:.2f}, tokens equal {result['tokens_equal']:.1%}"
    )
  print(json.dumps(result))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _DECODE.value:
    return _decode(experiment.resolve(_CONFIG.value))
  result = bench.run(
    experiment.resolve(_CONFIG.value),
    steps=_STEPS.value,
    warmup=_WARMUP.value,
    peak=_PEAK.value,
    compare_torch=_TORCH.value,
  )
  print(
    f"nopejax: {result['tokens_per_s']:,.0f} tokens/s, step {result['step_s'] * 1e3:.1f} ms, "
    f"compile {result['compile_s']:.1f} s, MFU {result['mfu']:.3f} causal-halved / "
    f"{result['mfu_full_attention']:.3f} full attention, of "
    f"{result['peak_flops'] / 1e9:,.0f} GFLOP/s ({result['peak_source']})"
  )
  if "torch" in result:
    t = result["torch"]
    print(
      f"pytorch: {t['tokens_per_s']:,.0f} tokens/s, step {t['step_s'] * 1e3:.1f} ms, "
      f"MFU {t['mfu']:.3f}; nopejax/pytorch = {result['jax_over_torch']:.2f}"
    )
  if "note" in result:
    print(result["note"])
  print(json.dumps(result))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
