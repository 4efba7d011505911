"""Launching on a remote runner (Dataflow, ...): paths its workers cannot read are refused at launch, and models
that only exist on the launcher's disk are staged where they can.

A remote runner's workers see none of the launcher's files: a laptop `--input` would match at launch and then every
file would become a read dead letter on the workers, a local `--output` would be written on workers' disks and lost.
So for any runner other than the local ones (the DirectRunner in its variants, Prism, the in-process FnApiRunner)
input, output, model and previous paths must be on a shared filesystem (gs://, s3://, ...). `--model default` and
`hf:ORG/NAME` resolve to directories on the launcher; they are uploaded once per model fingerprint to
`<--temp_location>/bert-embed-models/<fingerprint>/` and later launches of the same model reuse that copy.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

from formats.paths import is_local_path
from formats.usage import UsageError, split_patterns

_LOG = logging.getLogger(__name__)
LOCAL_RUNNERS = frozenset({"direct", "bundlebaseddirect", "switchingdirect", "testdirect", "prism", "fnapi"})
STAGING_DIR = "bert-embed-models"
STAGED_MARKER = "STAGED.json"  # written last: its presence means the staged copy is complete


def runner_name(runner) -> str:
  """The runner's class name as given (`--runner`), DirectRunner when none is."""
  if runner is None:
    return "DirectRunner"
  name = runner if isinstance(runner, str) else type(runner).__name__
  return name.rsplit(".", 1)[-1]


def is_remote_runner(runner) -> bool:
  """True unless the runner runs on this machine (its workers then share the launcher's files and environment):
  a runner name or a runner object."""
  name = runner_name(runner).lower()
  return name.removesuffix("runner") not in LOCAL_RUNNERS


def local_runner(runner):
  """The runner to build a job with: the DirectRunner, when `runner` (`--runner`) is unset or names it, kept from
  trying Prism first; else None (Beam makes the named one).

  Beam's DirectRunner first tries to run a batch job on Prism, a separate runner whose binary it downloads, and falls
  back to the in-process FnApiRunner when that fails (as it does offline): about a second of a small job's start-up
  (benchmarks/RESULTS.md, "Start-up"), and on a machine that can download it, a runner whose workers do not share the
  launcher's loaded models. Its support check skips Prism for interactive pipelines; that switch is what this uses,
  so the runner otherwise decides as Beam's does (the FnApiRunner, in process or on --direct_num_workers).
  """
  if not (runner is None or isinstance(runner, str)) or runner_name(runner).lower() not in (
      "direct", "directrunner", "switchingdirectrunner"):
    return None
  from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner  # pylint: disable=import-outside-toplevel
  chosen = SwitchingDirectRunner()
  chosen.is_interactive()  # sets its _is_interactive, which only keeps Prism out
  return chosen


def _refuse(flag: str, value: str, runner: str) -> UsageError:
  return UsageError(f"{flag} {value} is a path on this machine, which the {runner} workers cannot read: give a "
                    "gs:// (or other remote filesystem) path")


def needs_staging(o) -> bool:
  """Whether the model flags name a model that is resolved on the launcher's disk."""
  return o.model == "default" or any((v or "").startswith("hf:") for v in (o.model, o.preprocessor, o.encoder))


def check_paths(o, runner, temp_location: Optional[str]) -> None:
  """Raises UsageError naming the first local input, output, model or previous path (a remote runner only), or
  when a model must be staged and --temp_location is not remote."""
  if not is_remote_runner(runner):
    return
  name = runner_name(runner)
  if needs_staging(o) and (not temp_location or is_local_path(temp_location)):
    given = f" (got {temp_location})" if temp_location else ""
    flag, value = next((f, v) for f, v in (("--model", o.model), ("--preprocessor", o.preprocessor),
                                            ("--encoder", o.encoder)) if v == "default" or (v or "").startswith("hf:"))
    raise UsageError(f"on the {name}, {flag} {value} is staged under --temp_location for the workers: give a gs:// "
                     f"(or other remote filesystem) --temp_location{given}")
  for pattern in split_patterns(o.input):
    if is_local_path(pattern):
      raise _refuse("--input", pattern, name)
  if o.output and is_local_path(o.output):
    raise _refuse("--output", o.output, name)
  if o.model and o.model != "default" and not o.model.startswith("hf:") and is_local_path(o.model):
    raise _refuse("--model", o.model, name)
  for flag, value in (("--preprocessor", o.preprocessor), ("--encoder", o.encoder)):
    if value and not value.startswith("hf:") and is_local_path(value):
      raise _refuse(flag, value, name)
  previous = (o.previous or "").strip()
  if previous:
    from snapshot.latest_pointer import LATEST_SCHEME  # pylint: disable=import-outside-toplevel
    path = previous[len(LATEST_SCHEME):].strip() if previous.startswith(LATEST_SCHEME) else previous
    if path and is_local_path(path):
      raise _refuse("--previous", previous, name)


def staging_root(temp_location: Optional[str], fingerprint: str, runner) -> str:
  """Where a launcher-side model of this fingerprint is staged; raises UsageError without a remote --temp_location."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  if not temp_location or is_local_path(temp_location):  # check_paths refused it already
    raise UsageError(f"on the {runner_name(runner)}, a model on this machine is staged under --temp_location, "
                     "which must be a gs:// (or other remote filesystem) path")
  return FileSystems.join(temp_location.rstrip("/"), STAGING_DIR, fingerprint)


def _upload_tree(local_dir: str, remote_dir: str) -> int:
  """Copies every file under `local_dir` to `remote_dir` (same relative paths); returns the number of files."""
  from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=import-outside-toplevel
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  count = 0
  for directory, _, names in os.walk(local_dir):
    for name in sorted(names):
      path = os.path.join(directory, name)
      parts = os.path.relpath(path, local_dir).split(os.sep)
      with open(path, "rb") as src, FileSystems.create(
          FileSystems.join(remote_dir, *parts), mime_type="application/octet-stream",
          compression_type=CompressionTypes.UNCOMPRESSED) as dst:
        while chunk := src.read(1 << 24):
          dst.write(chunk)
      count += 1
  return count


def stage_model(spec, fingerprint: str, temp_location: Optional[str], runner, source: str):
  """The ModelSpec of `spec` (a model on the launcher's disk) as staged for remote workers, uploading it once.

  `source` is what the model flags said (e.g. "default", "hf:ORG/NAME"), recorded as the spec's `staged_from`.

  Keyed by the model fingerprint (models/model_fingerprint.py: what determines the vectors), so every launch of the
  same model shares one copy; the marker file is written after all the model's files, so an interrupted upload is
  redone by the next launch.
  """
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  from models.model_flags import ModelSpec  # pylint: disable=import-outside-toplevel
  root = staging_root(temp_location, fingerprint, runner)
  staged = ModelSpec(FileSystems.join(root, "preprocessor"), FileSystems.join(root, "encoder"), spec.name,
                     staged_from=source)
  marker = FileSystems.join(root, STAGED_MARKER)
  if FileSystems.exists(marker):
    _LOG.info("model %s already staged at %s", spec.name, root)
    return staged
  _LOG.warning("staging the model %s for the %s workers at %s (once per model fingerprint)", spec.name,
               runner_name(runner), root)
  try:
    files = sum(_upload_tree(local, remote) for local, remote in ((spec.preprocessor, staged.preprocessor),
                                                                    (spec.encoder, staged.encoder)))
    from snapshot.manifest import write_atomically  # pylint: disable=import-outside-toplevel
    write_atomically(marker, json.dumps({"fingerprint": fingerprint, "name": spec.name, "files": files,
                                         "staged_from": staged.staged_from}).encode("utf-8"))
  except Exception as e:  # pylint: disable=broad-except  (a cloud storage error: reported in one line)
    raise UsageError(f"cannot stage the model {spec.name} at {root}: {type(e).__name__}: {e}") from None
  return staged
