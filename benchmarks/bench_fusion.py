"""What this CPU's TensorFlow does with the exported encoder's intermediate products: fused or not, and how fast.

The exported graph spells each layer's GELU in the form TF's oneDNN remapper can fold into the MatMul + BiasAdd
before it (tests/test_modeling_encoder.py checks the graph). Whether the remapper does so depends on the CPU and on
oneDNN's ISA limit (`ONEDNN_MAX_CPU_ISA=AVX2` approximates an AVX2-only CPU), so it is a figure, not a test:

  python benchmarks/bench_fusion.py                          # this CPU
  ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_fusion.py  # as on an AVX2-only CPU
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from modeling import encoder as encoder_lib  # noqa: E402
from modeling.config import BertConfig  # noqa: E402
from modeling.importers import random_init  # noqa: E402
from runtime import precision  # noqa: E402


def fused_products(run) -> list[tuple[tuple[str, ...], str]]:
  """The fused inner products TF ran for `run()` (from its run metadata): [(fused ops, dtype name)]."""
  from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel
  ctx = context.context()
  ctx.enable_run_metadata()
  try:
    run()
    metadata = ctx.export_run_metadata()
  finally:
    ctx.disable_run_metadata()
  return [(tuple(s.decode() for s in node.attr["fused_ops"].list.s), tf.dtypes.as_dtype(node.attr["T"].type).name)
          for graph in metadata.function_graphs for partition in graph.partition_graphs
          for node in partition.node if "MatMul" in node.op and "fused_ops" in node.attr]


def main() -> None:
  config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536, max_position_embeddings=512, hidden_act="gelu")
  enc = encoder_lib.build_encoder(config, random_init.random_weights(config, 0))
  rng = np.random.default_rng(0)
  inputs = {"input_word_ids": rng.integers(1000, 30000, (32, 64)).astype(np.int32),
            "input_mask": np.ones((32, 64), np.int32), "input_type_ids": np.zeros((32, 64), np.int32)}
  flags = precision.cpu_flags()
  print(f"CPU: avx2={'avx2' in flags} avx512f={'avx512f' in flags} avx512_bf16={'avx512_bf16' in flags} "
        f"amx_bf16={'amx_bf16' in flags}; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}")
  for name in ("fp32", "bf16"):
    why = precision.blocker(name, "/CPU:0") if name != "fp32" else None
    if why:  # a bf16 call would abort the process (runtime/precision_support.py)
      print(f"{name}: not run ({why})")
      continue
    scope = precision.rewrite_scope(precision.rewrite_name(name, "/CPU:0"))
    with scope():
      fused = fused_products(lambda: enc(inputs))
      enc(inputs)
      start = time.perf_counter()
      for _ in range(5):
        enc(inputs)
      seconds = (time.perf_counter() - start) / 5
    gelu = sum(1 for ops, _ in fused if ops == ("BiasAdd", "GeluExact"))
    dtypes = sorted({dtype for _, dtype in fused})
    print(f"{name}: {gelu}/{config.num_hidden_layers} intermediate products fused with GELU, "
          f"{len(fused)} fused products in all ({', '.join(dtypes) or 'none'}); "
          f"{seconds * 1000:.1f} ms per 32x64 batch")


if __name__ == "__main__":
  main()
