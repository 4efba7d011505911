"""Whether a reduced precision can run on this worker, decided before its first call from facts alone (no TF):
which TF rewrite makes it on the device, the CPU's flags, oneDNN's ISA cap, whether TF sees a GPU.

Why before: when oneDNN cannot build a primitive it throws a C++ exception (`dnnl::error`) that TensorFlow does not
catch, and the process aborts (exit 134). No Python code runs after it, so a failing reduced-precision call cannot be
caught and encoded again in fp32: the decision has to be made without calling it.

bf16 on a CPU runs on oneDNN's native bf16 kernels: ISA AVX512_CORE_BF16 (the CPU flag avx512_bf16) or
AVX10_1_512_AMX (amx_bf16). oneDNN uses the CPU's ISA capped by `ONEDNN_MAX_CPU_ISA` (or `DNNL_MAX_CPU_ISA`, its
older spelling; both are honoured, the lower cap wins, values case-insensitive). TF rewrites the graph to bf16
wherever the CPU has AVX512F or AVX-NE-CONVERT, whatever the cap: on an AVX512_BF16 CPU capped at AVX2 the rewritten
graph asks oneDNN for bf16 primitives it cannot build for some shapes, and the process aborts at such a batch.
The decision is conservative: bf16 only where native kernels are there and the cap allows them. On AVX512_CORE
oneDNN emulates bf16 for some primitives (slower than fp32), which is not counted; a cap value this module does not
know counts as no bf16. fp16 runs only on a GPU that TensorFlow sees (TF's CUDA rewrite).

A probe call in a short-lived child process would prove only the shapes it encoded (the failure depends on the
batch's shape), and costs a TF import and a model load per machine; the ISA decides for every shape, for free.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

# oneDNN's ISA names and their bit sets (its public enum dnnl_cpu_isa_t): an ISA is usable under a cap when its bits
# are a subset of the cap's. The order is partial (AVX2_VNNI_2 is below none of the AVX-512 ISAs).
ISA_BITS = {
    "SSE41": 0x1, "AVX": 0x3, "AVX2": 0x7, "AVX2_VNNI": 0xf, "AVX2_VNNI_2": 0x1f, "AVX512_CORE": 0x27,
    "AVX512_CORE_VNNI": 0x67, "AVX512_CORE_BF16": 0xe7, "AVX10_1_512": 0x1ef, "AVX512_CORE_FP16": 0x1ef,
    "AVX10_1_512_AMX": 0xfef, "AVX512_CORE_AMX": 0xfef, "AVX10_1_512_AMX_FP16": 0x1fef, "AVX512_CORE_AMX_FP16": 0x1fef,
}
NO_CAP = ("DEFAULT", "ALL")  # ALL: oneDNN 1.x's spelling of no restriction
CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# The CPU flag of each native bf16 ISA of oneDNN.
BF16_ISAS = (("avx512_bf16", "AVX512_CORE_BF16"), ("amx_bf16", "AVX10_1_512_AMX"))


def cpu_flags() -> set[str]:
  """The CPU feature flags of /proc/cpuinfo (empty where it does not exist)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


def cpu_has_bf16(flags: set[str]) -> bool:
  return any(flag in flags for flag, _ in BF16_ISAS)


def isa_caps(env: Mapping[str, str]) -> list[tuple[str, str]]:
  """(variable, value) of each oneDNN ISA cap set in `env` (an empty value is no cap, as oneDNN reads it)."""
  return [(name, env[name].strip()) for name in CAP_VARIABLES if env.get(name, "").strip()]


def bf16_blocker(flags: set[str], env: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """None when oneDNN has native bf16 kernels on a CPU with these flags under the caps in `env` (default: this
  process's environment); otherwise why not, as a phrase."""
  env = os.environ if env is None else env
  native = [isa for flag, isa in BF16_ISAS if flag in flags]
  if not native:
    return "this CPU has neither AVX512_BF16 nor AMX-BF16, for which oneDNN has native bf16 kernels"
  for name, value in isa_caps(env):
    key = value.upper()
    if key in NO_CAP:
      continue
    if key not in ISA_BITS:
      return f"{name}={value} is not a oneDNN ISA known here, so bf16 kernels are not assumed under it"
    native = [isa for isa in native if ISA_BITS[isa] & ISA_BITS[key] == ISA_BITS[isa]]
    if not native:
      return f"{name}={value} keeps oneDNN from AVX512_CORE_BF16, its first ISA with native bf16 kernels"
  return None


def blocker(precision: str, device: str, flags: set[str], env: Optional[Mapping[str, str]] = None,
            gpu_count: int = 0) -> Optional[str]:
  """Why `precision` must not be called on `device` of this worker, or None when nothing known stops it (whether
  the rewrite then changes anything is seen on probe texts: runtime/precision.py)."""
  if rewrite_name(precision, device) is None:
    return f"no {precision} rewrite on {device}"
  if precision == "bf16":  # on a CPU (the only rewrite to bf16)
    return bf16_blocker(flags, env)
  if precision == "fp16" and gpu_count < 1:  # on a GPU device that TF does not see
    return "TensorFlow sees no GPU on this worker"
  return None


def rewrite_name(precision: str, device: str) -> Optional[str]:
  """The grappler rewrite that makes `precision` on `device`, or None when there is none."""
  on_gpu = "GPU" in device.upper()
  if precision == "bf16" and not on_gpu:
    return "auto_mixed_precision_onednn_bfloat16"
  if precision == "fp16" and on_gpu:
    return "auto_mixed_precision"
  return None
