"""Resuming a killed or failed run, decided at launch: which checkpoints a run may use, and why others not.

Sources: the staging directories that earlier runs of the same output prefix left (a rerun of the same command),
and, with `--previous latest:ROOT`, those of failed runs of other prefixes under ROOT started after ROOT/LATEST was
last written (the scheduling pattern: a new prefix per run). A source is used when its run.json
(formats/checkpoint_files.py) names its own prefix (and its directory's name agrees), the same embedding
fingerprint and the same checkpoint columns (and form: staged shards or separate checkpoints, checkpoint_form);
otherwise it is ignored, with the reason in the manifest's `resume`
section. Of a used source, every published checkpoint is read (and verified by the workers: transforms/resume_rows.py);
torn ones (a temporary name) are ignored with a reason. `--no-resume` uses none (and the run removes its prefix's
earlier staging at its start, as before).

After the run commits, its prefix's earlier staging directories and the sources it used are removed
(snapshot/commit.py, step 7); a failed run's are kept. `bert-embed clean` lists and removes what is left.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import NamedTuple, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from formats import checkpoint_files
from formats.checkpoint_files import RunDescription
from formats.output_files import path_basename, staging_token
from formats.paths import matching
from snapshot.fingerprint import differences
from snapshot.latest_pointer import is_under, normalize_prefix, same_prefix
from formats import compact
from formats.columns import OutputColumns
from snapshot.manifest import ShardIdentity

_STAGING_STEM = "bert-embed-tmp-"


class ResumePlan(NamedTuple):
  enabled: bool
  key: str  # this run's resume key (its checkpoints' footers)
  columns: object  # OutputColumns of the checkpoints
  parts: bool  # the checkpoints are the staged embedding shards, in the output's form (checkpoint_form)
  files: dict  # {checkpoint: ShardIdentity} to read
  rows: int  # rows the files hold (duplicates included)
  sources: tuple  # the staging directories used, newest first
  stopped_at: Optional[float]  # when the newest source last wrote a checkpoint
  ignored: tuple  # (path, reason)
  remove_after_commit: tuple  # staging directories to remove once the run commits

  def section(self, unreadable=()) -> dict:
    """The manifest's `resume`; `unreadable`: (checkpoint, reason) the workers could not use."""
    ignored = list(self.ignored) + [(path, _checkpoint_words(reason)) for path, reason in sorted(unreadable)]
    return {"enabled": self.enabled, "resumed_from": self.sources[0] if self.sources else None,
            "stopped_at": _iso(self.stopped_at), "sources": list(self.sources), "checkpoint_files": len(self.files),
            "ignored": [{"source": path, "reason": reason} for path, reason in ignored]}

  def progress_line(self) -> Optional[str]:
    if not self.files:
      return None
    return (f"bert-embed: resuming {self.rows} records from the run that stopped at {_iso(self.stopped_at)} "
            f"({self.sources[0]})")


def _checkpoint_words(reason: str) -> str:
  """A previous-shard check's reason (transforms/previous_rows.py) in a checkpoint's terms: its name is its manifest,
  and its footer carries a resume key where a shard's carries the embedding fingerprint."""
  return (reason.replace("the file its manifest describes", "the file its name describes")
          .replace("the manifest records", "its name says")
          .replace("footer's embedding fingerprint", "footer's resume key")
          .replace("is not its manifest's", "is not this run's (another prefix's or fingerprint's checkpoint)"))


def _iso(seconds: Optional[float]) -> Optional[str]:
  if seconds is None:
    return None
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def _folder(path: str) -> str:
  return path.rstrip("/\\").rsplit("/", 1)[0] if "://" in path else os.path.dirname(path.rstrip(os.sep))


def staging_folders(directory: str, recursive: bool = False) -> list[str]:
  """The staging directories (bert-embed-tmp-*) in `directory`, or below it."""
  if "://" not in directory:
    if not os.path.isdir(directory):
      return []
    if not recursive:
      return sorted(os.path.join(directory, d) for d in os.listdir(directory)
                    if d.startswith(_STAGING_STEM) and os.path.isdir(os.path.join(directory, d)))
    return sorted(os.path.join(top, d) for top, dirs, _ in os.walk(directory) for d in dirs
                  if d.startswith(_STAGING_STEM))
  pattern = FileSystems.join(directory.rstrip("/"), "**" if recursive else f"{_STAGING_STEM}*/*")
  return sorted({_folder(m.path) for m in matching(pattern)
                 if path_basename(_folder(m.path)).startswith(_STAGING_STEM)})


def _accept(folder: str, description: RunDescription, output: str, latest_root: Optional[str],
            current: RunDescription) -> Optional[str]:
  """Why a staging directory's checkpoints must not be used by this run, or None."""
  prefix = description.output_prefix
  if (staging_token(folder, prefix) is None
      or not same_prefix(_folder(folder) + ("/" if "://" in folder else os.sep) + path_basename(prefix), prefix)):
    return f"foreign: its run.json names the output {prefix}, which does not write this directory"
  if not same_prefix(prefix, output) and not (latest_root and is_under(prefix, latest_root)):
    return f"another output prefix's ({prefix})"
  if description.fingerprint != current.fingerprint:
    changes = differences(description.fingerprint_inputs, current.fingerprint_inputs)
    return "another embedding fingerprint: " + ("; ".join(changes) or "its inputs differ")
  if tuple(description.columns) != tuple(current.columns):
    return f"other columns ({', '.join(description.columns)})"
  return None


def plan_resume(output: str, token: str, fingerprint: str, fingerprint_inputs: dict, columns, *, enabled: bool,
                latest_root: Optional[str], latest_written: Optional[float], started_at: float,
                parts: bool = False) -> ResumePlan:
  """The checkpoints run `token` of `output` may use (module docstring). `latest_written`: ROOT/LATEST's time;
  `parts`: the run's staged shards are its checkpoints (checkpoint_form)."""
  kept = checkpoint_columns(columns, parts)
  names = checkpoint_names(kept, parts)
  own_prefix = normalize_prefix(output)
  key = checkpoint_files.resume_key(fingerprint, own_prefix, names)
  current = RunDescription(own_prefix, fingerprint, fingerprint_inputs, names, started_at)
  plan = ResumePlan(enabled, key, kept, parts, {}, 0, (), None, (), ())
  if not enabled:
    return plan
  directory = _folder(own_prefix)
  own = [f for f in staging_folders(directory) if staging_token(f, output) not in (None, token)]
  others = []
  if latest_root:
    others = [f for f in staging_folders(normalize_prefix(latest_root), recursive=True)
              if f not in own and staging_token(f, output) != token]
  files, ignored, sources, remove, rows = {}, [], [], list(own), 0
  for folder in own + others:
    try:
      description = checkpoint_files.read_run_description(folder)
    except (OSError, ValueError) as e:
      if folder in own:  # an earlier version's staging, or one killed before it was described
        ignored.append((folder, f"no readable {checkpoint_files.RUN_FILE} ({type(e).__name__})"))
      continue
    if folder in others and latest_written is not None and description.started_at <= latest_written:
      continue  # older than the last successful run: not a failed attempt of it
    reason = _accept(folder, description, output, latest_root, current)
    if reason:
      ignored.append((folder, reason))
      continue
    found, newest = [], description.started_at
    for m in matching(FileSystems.join(folder, "*")):
      name = checkpoint_files.parse_checkpoint_name(m.path)
      if name is not None:
        found.append((m.path, name.size_bytes, name.sha256))
        rows += name.rows
        newest = max(newest, m.last_updated_in_seconds or 0.0)
      elif checkpoint_files.is_torn_checkpoint(m.path):
        ignored.append((m.path, "torn: its write never finished (the run stopped during it)"))
    source_key = checkpoint_files.resume_key(fingerprint, normalize_prefix(description.output_prefix), names)
    files.update(identities(found, source_key))
    if found:
      sources.append((newest, folder))
    if folder not in remove:
      remove.append(folder)
  sources.sort(reverse=True)
  return plan._replace(files=files, rows=rows, sources=tuple(f for _, f in sources),
                       stopped_at=sources[0][0] if sources else None, ignored=tuple(ignored),
                       remove_after_commit=tuple(remove))


def prepare(cfg, plan, staging: str, token: str, enabled: bool, started_at: float) -> ResumePlan:
  """At launch: the resume plan of run `token` (JobConfig `cfg`, previous.Plan `plan`), and its run.json written
  into its staging directory `staging`."""
  resume_plan = plan_resume(cfg.output, token, plan.fingerprint, plan.fingerprint_inputs, cfg.output_columns,
                            enabled=enabled, latest_root=plan.previous.latest_root if plan.previous else None,
                            latest_written=latest_written(plan.pointer), started_at=started_at,
                            parts=checkpoint_form(cfg))
  checkpoint_files.write_run_description(staging, RunDescription(
      normalize_prefix(cfg.output), plan.fingerprint, plan.fingerprint_inputs,
      checkpoint_names(resume_plan.columns, resume_plan.parts), started_at))
  return resume_plan


def latest_written(pointer: str) -> Optional[float]:
  """When LATEST was last written, or None without one."""
  found = matching(pointer) if FileSystems.exists(pointer) else []
  return found[0].last_updated_in_seconds if found else None


def checkpoint_form(cfg) -> bool:
  """Whether a run's staged embedding shards are its checkpoints (True), or it writes separate checkpoints (False):
  its shards can be its checkpoints where rows reach the write as they leave the encoder, in Parquet. Not past a
  barrier: the int8 calibration (a combine over all vectors; int8 also when its ranges are the previous output's,
  which may change between a kill and a rerun), --num-shards (a GroupByKey), --dedupe-texts (the fan-out's join),
  --long-text chunk (the windows' join); nor TFRecord (no footer for the resume key)."""
  return (cfg.output_format == "parquet" and not cfg.num_shards and not cfg.dedupe_texts
          and cfg.long_text != "chunk" and cfg.output_dtype != compact.INT8)


def checkpoint_columns(columns: OutputColumns, parts: bool = False) -> OutputColumns:
  """What a checkpoint holds of an output's columns: staged shards (`parts`) all of them; separate checkpoints all
  but the text and windows, the vector uncompacted."""
  if parts:
    return columns
  return dataclasses.replace(columns, text=False, windows=False, dtype="float32", truncate_dim=None)


def checkpoint_names(columns: OutputColumns, parts: bool) -> tuple:
  """The checkpoint columns as run.json and the resume key name them: a staged shard's also say its vector form."""
  if not parts:
    return columns.names()
  form = columns.dtype + (f" first {columns.truncate_dim}" if columns.truncate_dim is not None else "")
  return columns.names() + (f"staged shards, {form}",)


def identities(files: Sequence[tuple[str, int, str]], key: str) -> dict:
  """{path: ShardIdentity} from (path, size, sha256) and the resume key the footers must carry."""
  return {path: ShardIdentity(size, sha, key) for path, size, sha in files}
