"""No precision setting aborts the process (runtime/precision_support.py): a reduced precision that oneDNN cannot run
under its ISA cap, or without a GPU, is never called; explicit --precision falls back to fp32 in one line."""
import json
import os
import re
import subprocess
import sys

import pytest

from runtime import precision, precision_support

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16_CPU = {"avx2", "avx512f", "avx512bw", "avx512_bf16"}
AMX_CPU = BF16_CPU | {"amx_bf16", "amx_tile"}


@pytest.mark.parametrize("flags, env, runs", [
    (BF16_CPU, {}, True),
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False),  # oneDNN would emulate bf16: not counted
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, False),
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX2_VNNI_2"}, False),  # bf16 conversions, but not below AVX512_CORE_BF16
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX10_1_512"}, True),
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "DEFAULT"}, True),
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": ""}, True),  # empty: no cap, as oneDNN reads it
    (BF16_CPU, {"DNNL_MAX_CPU_ISA": "AVX2"}, False),  # the older spelling
    (BF16_CPU, {"DNNL_MAX_CPU_ISA": "avx512_core_bf16"}, True),
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": " avx2 "}, False),  # case and spaces do not matter
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "ALL", "DNNL_MAX_CPU_ISA": "AVX2"}, False),  # the lower cap wins
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16_PLUS"}, False),  # unknown: conservative
    (BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX3"}, False),
    (AMX_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
    ({"amx_bf16", "avx512f"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, False),  # AMX only: capped below it
    ({"amx_bf16", "avx512f"}, {"ONEDNN_MAX_CPU_ISA": "AVX10_1_512_AMX"}, True),
    ({"avx2", "avx512f", "avx512bw"}, {}, False),  # AVX-512 without bf16: emulation only
    ({"avx2", "fma"}, {}, False),
    (set(), {}, False),
])
def test_bf16_runs_only_with_native_kernels_under_the_isa_cap(flags, env, runs):
  why = precision_support.bf16_blocker(flags, env)
  assert (why is None) == runs, why
  if not runs:  # one phrase naming the cause
    assert "\n" not in why and ("MAX_CPU_ISA=" in why) == bool(precision_support.cpu_has_bf16(flags))


def test_the_guard_covers_every_reduced_precision_and_device():
  blocker = precision_support.blocker
  capped = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
  assert blocker("bf16", "/CPU:0", BF16_CPU, {}) is None
  assert "ONEDNN_MAX_CPU_ISA=AVX2" in blocker("bf16", "/CPU:0", BF16_CPU, capped)
  assert blocker("bf16", "/GPU:0", BF16_CPU, {}, gpu_count=1) == "no bf16 rewrite on /GPU:0"
  assert blocker("fp16", "/CPU:0", BF16_CPU, {}) == "no fp16 rewrite on /CPU:0"
  assert blocker("fp16", "/GPU:0", set(), capped, gpu_count=1) is None  # the cap is oneDNN's (CPU) only
  assert blocker("fp16", "/GPU:0", set(), {}, gpu_count=0) == "TensorFlow sees no GPU on this worker"


def test_auto_and_the_probe_follow_the_guard(monkeypatch):
  monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
  assert precision.available("/CPU:0", BF16_CPU) == ()
  assert not precision.needs_probe("auto", "/CPU:0", BF16_CPU)
  assert not precision.needs_probe("bf16", "/CPU:0", BF16_CPU)
  monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
  assert precision.available("/CPU:0", BF16_CPU) == ("bf16",)
  assert precision.needs_probe("auto", "/CPU:0", BF16_CPU) and precision.needs_probe("bf16", "/CPU:0", BF16_CPU)


def test_a_blocked_precision_is_never_called(monkeypatch, caplog):
  """resolve() decides before any encoder call: the encoder is not called at all, and no probe is needed."""
  monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")

  def encoder(inputs):
    raise AssertionError("the encoder was called")

  for requested in ("bf16", "auto"):
    runner = precision.resolve(encoder, "/CPU:0", requested, None, flags=BF16_CPU)
    assert runner.precision == "fp32", runner.report
  assert "ONEDNN_MAX_CPU_ISA=AVX2" in runner.report["skipped"]  # auto's report says why
  runner = precision.resolve(encoder, "/GPU:0", "fp16", None, flags=BF16_CPU)  # no GPU here
  assert runner.precision == "fp32"
  assert runner.report["candidates"]["fp16"]["skipped"] == "TensorFlow sees no GPU on this worker"
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert len(warnings) == 2 and all("encoding in fp32" in w for w in warnings), warnings


# --- the command under ONEDNN_MAX_CPU_ISA=AVX2, in a child process (a oneDNN abort would end this one) ---
CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
NOISE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl::InitializeLog)")


@pytest.fixture(scope="module")
def twelve_layer_model_dir(tmp_path_factory, tiny_config_file, tiny_vocab_file) -> str:
  """The tiny model's width with BERT-base's 12 layers (the issue's aborts were on 12-layer models)."""
  from modeling import export  # pylint: disable=import-outside-toplevel
  with open(tiny_config_file, encoding="utf-8") as f:
    config = {**json.load(f), "num_hidden_layers": 12}
  path = tmp_path_factory.mktemp("twelve_layers") / "bert.json"
  path.write_text(json.dumps(config), encoding="utf-8")
  out = tmp_path_factory.mktemp("twelve_layers") / "export"
  export.export_model(f"random:{path}", str(out), vocab=tiny_vocab_file, seq_length=32, seed=1)
  return str(out)


def _capped_run(model_dir, tmp_path, name, lines, *extra):
  """`bert-embed run` on `lines` texts of 1 to 30 words (many batch shapes) with oneDNN capped at AVX2:
  (exit status, stderr lines other than TF's start-up notices, manifest or None)."""
  words = "the quick brown fox jumps over the lazy dog and a cat sat on the mat in the house".split()
  source = tmp_path / "in.txt"
  source.write_text("".join(" ".join(words[(i + k) % len(words)] for k in range(1 + i * 7 % 30)) + "\n"
                            for i in range(lines)), encoding="utf-8")
  out = tmp_path / name / "emb"
  env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
  proc = subprocess.run(
      [sys.executable, "-m", "cli", "run", "--model", model_dir, "--input", str(source), "--output",
       str(out), "--seq-length", "32", "--quiet", *extra],
      cwd=ROOT, env={**env, **CAP}, capture_output=True, text=True, timeout=600, check=False)
  said = [line for line in proc.stderr.splitlines() if line.strip() and not NOISE.match(line)]
  manifest = out.parent / "emb-manifest.json"
  return proc.returncode, said, json.loads(manifest.read_text()) if manifest.exists() else None


def test_explicit_bf16_under_an_avx2_cap_falls_back_to_fp32_in_one_line(twelve_layer_model_dir, tmp_path):
  """On an AVX512_BF16 CPU the cap is why; on a CPU without bf16 the CPU is, and the run is as clean."""
  code, said, manifest = _capped_run(twelve_layer_model_dir, tmp_path, "bf16", 40, "--precision", "bf16")
  why = precision_support.bf16_blocker(precision.cpu_flags(), CAP)
  assert code == 0 and said == [f"WARNING runtime.precision: --precision bf16 is not available on this worker "
                                f"({why}): encoding in fp32"], said
  assert manifest["precision_used"] == {"fp32": 40}


def test_auto_under_an_avx2_cap_runs_clean_every_time(twelve_layer_model_dir, tmp_path):
  """The issue's runs aborted on some tries and not others: three runs, each clean and in fp32."""
  for attempt in range(3):
    code, said, manifest = _capped_run(twelve_layer_model_dir, tmp_path, f"auto{attempt}", 300, "--precision", "auto")
    assert (code, said) == (0, []), (attempt, code, said)
    assert manifest["precision_used"] == {"fp32": 300}
