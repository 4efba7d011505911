"""The Flex Template's entry point builds the job the CLI builds, from `--name=value` parameters; the scheduling
examples use real template parameters. No cloud: the pipeline is built, converted to its runner proto, not run."""
import ast
import dataclasses
import json
import pathlib
import runpy
import sys
import types

import apache_beam as beam
import pytest
import yaml

from cli import main as cli
from pipeline import run as run_module

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"


class _NotRun:
  """Stands for the PipelineResult of a job that was built but not run."""

  def wait_until_finish(self, duration=None):  # pylint: disable=unused-argument
    return "DONE"


@pytest.fixture
def captured(monkeypatch):
  """Replaces Pipeline.run: records each built graph's transform labels and the JobConfig it came from."""
  graphs, configs = [], []
  real_resolve = run_module.resolve

  def resolve(options):
    configs.append(real_resolve(options))
    return configs[-1]

  def fake_run(self, test_runner_api="AUTO"):  # pylint: disable=unused-argument
    proto = self.to_runner_api()
    graphs.append(sorted(t.unique_name for t in proto.components.transforms.values()))
    return _NotRun()

  monkeypatch.setattr(run_module, "resolve", resolve)
  monkeypatch.setattr(beam.Pipeline, "run", fake_run)
  return types.SimpleNamespace(graphs=graphs, configs=configs)


def _previous_output(tmp_path) -> str:
  """A completed earlier output of another model: the job re-embeds everything and checks drift."""
  prefix = tmp_path / "runs" / "run1" / "emb"
  prefix.parent.mkdir(parents=True)
  pathlib.Path(str(prefix) + "-manifest.json").write_text(json.dumps({
      "schema_version": 1, "model": {"fingerprint": "0" * 64}, "dimension": 32, "options": {"format": "parquet"},
      "output_files": []}))
  return str(prefix)


def test_launcher_builds_the_same_graph_as_the_cli_from_name_value_parameters(
    tmp_path, tiny_model_dir, captured, monkeypatch):
  corpus = tmp_path / "in.jsonl"
  corpus.write_text('{"id": "a", "text": "hello world"}\n', encoding="utf-8")
  previous, output = _previous_output(tmp_path), str(tmp_path / "runs" / "run2" / "emb")
  # The Flex Template launcher passes every parameter as --name=value (metadata.json's snake_case names).
  flex = [f"--input={corpus}", "--input_format=jsonl", f"--model={tiny_model_dir}", f"--output={output}",
          "--seq_length=32", "--keep_text=true", "--emit_tokens=false", "--normalize=true", "--format=parquet",
          f"--previous=latest:{tmp_path / 'runs'}", "--drift_sample=5"]
  (tmp_path / "runs" / "LATEST").write_text(previous + "\n")
  monkeypatch.setattr(sys, "argv", [str(TEMPLATES / "main.py")] + flex)
  with pytest.raises(SystemExit) as exited:
    runpy.run_path(str(TEMPLATES / "main.py"), run_name="__main__")
  assert exited.value.code == 0
  # The same job typed on the command line: bare booleans, dashed names, space-separated values.
  assert cli.main(["run", "--input", str(corpus), "--input-format", "jsonl", "--model", tiny_model_dir,
                   "--output", output, "--seq-length", "32", "--keep-text", "--normalize",
                   "--previous", previous, "--drift-sample", "5"]) == 0
  (flex_graph, cli_graph), (flex_cfg, cli_cfg) = captured.graphs, captured.configs
  assert flex_graph == cli_graph
  assert flex_cfg.keep_text is True and flex_cfg.normalize is True and flex_cfg.emit_tokens is False
  assert flex_cfg.previous.prefix == cli_cfg.previous.prefix == previous
  assert dataclasses.replace(flex_cfg, previous=None) == dataclasses.replace(cli_cfg, previous=None)
  for label in ("SplitByPrevious/ReadPrevious/ReadRowGroups", "SplitByPrevious/JoinById", "DriftCheck/Summarize",
                "UpdateLatest/WritePointer"):
    assert any(name.startswith(label) for name in flex_graph), label


def _template_parameters():
  return {p["name"] for p in json.loads((TEMPLATES / "metadata.json").read_text())["parameters"]}


def _run_airflow_dag():
  """Executes the DAG file against stand-ins for Airflow's classes; returns the operator's keyword arguments."""
  calls = []

  class DAG:
    def __init__(self, **kwargs):
      self.kwargs = kwargs

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

  def operator(**kwargs):
    calls.append(kwargs)

  modules = {"airflow": types.SimpleNamespace(DAG=DAG),
             "airflow.providers.google.cloud.operators.dataflow":
                 types.SimpleNamespace(DataflowStartFlexTemplateOperator=operator)}
  saved = {name: sys.modules.get(name) for name in modules}
  sys.modules.update(modules)
  try:
    namespace = runpy.run_path(str(TEMPLATES / "schedule" / "airflow_dag.py"))
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module
  (kwargs,) = calls
  return namespace, kwargs


def test_airflow_example_launches_the_template_with_previous_latest_root():
  namespace, kwargs = _run_airflow_dag()
  assert namespace["dag"].kwargs["max_active_runs"] == 1 and kwargs["wait_until_finished"] is True
  launch = kwargs["body"]["launchParameter"]
  params, root = launch["parameters"], namespace["ROOT"]
  assert set(params) <= _template_parameters() and {"input", "output", "previous"} <= set(params)
  assert all(isinstance(v, str) for v in params.values())
  assert params["previous"] == f"latest:{root}" and params["output"].startswith(root + "/")
  assert "{{ ts_nodash }}" in params["output"]  # a new prefix per run, never the previous one


def test_airflow_example_needs_only_airflow_and_the_standard_library():
  """The DAG runs in Composer/Airflow, not in this venv: running it here cannot show that it imports nothing else
  (this project, Beam) or uses syntax newer than Composer's oldest Python (3.8)."""
  tree = ast.parse((TEMPLATES / "schedule" / "airflow_dag.py").read_text(), feature_version=(3, 8))
  imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
  imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
  roots = {name.split(".")[0] for name in imported}
  assert "airflow" in roots and roots - {"airflow"} <= set(sys.stdlib_module_names), roots


def test_cloud_workflows_example_launches_the_template_with_previous_latest_root():
  workflow = yaml.safe_load((TEMPLATES / "schedule" / "workflow.yaml").read_text())
  steps = {name: body for step in workflow["main"]["steps"] for name, body in step.items()}
  assert steps["launch"]["call"] == "googleapis.dataflow.v1b3.projects.locations.flexTemplates.launch"
  params = steps["launch"]["args"]["body"]["launchParameter"]["parameters"]
  assert set(params) <= _template_parameters() and {"input", "output", "previous"} <= set(params)
  assert params["previous"] == '${"latest:" + root}'
  assert params["output"].startswith("${root + ") and "stamp" in params["output"]
  assert steps["wait"]["call"] == "googleapis.dataflow.v1b3.projects.locations.jobs.get"
  schedule = (TEMPLATES / "schedule" / "schedule.sh").read_text()
  assert "gcloud scheduler jobs create http" in schedule and "workflows/bert-embed-reembed/executions" in schedule
