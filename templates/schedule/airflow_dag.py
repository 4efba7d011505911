"""Airflow DAG: re-embed the corpus every night, reusing the vectors of records that did not change.

Documentation, not run by the tests' pipeline: copy it to your Composer/Airflow `dags/` folder and set the
constants. Needs `apache-airflow-providers-google`. Each run writes a new prefix under ROOT and reads the last
successful one through `--previous latest:ROOT`; the job itself moves ROOT/LATEST as its last step, so a failed
run leaves the pointer on the last complete output. `max_active_runs=1` with `wait_until_finished=True` keeps two
runs from racing for the pointer.
"""
import datetime

from airflow import DAG
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator

PROJECT = "my-project"
REGION = "europe-west4"
BUCKET = "gs://my-bucket"
TEMPLATE = f"{BUCKET}/templates/bert-embed-cpu.json"  # written by templates/build.sh (bert-embed-gpu.json: GPU)
ROOT = f"{BUCKET}/embeddings/corpus"  # every run's output lives under it, next to the LATEST pointer

# Flex Template parameters: the names of templates/metadata.json, every value a string.
PARAMETERS = {
    "input": f"{BUCKET}/corpus/*.jsonl",
    "input_format": "jsonl",
    "model": f"{BUCKET}/models/mybert",
    "output": ROOT + "/run-{{ ts_nodash }}/emb",  # rendered by Airflow: a new prefix per run
    "previous": f"latest:{ROOT}",
    "keep_text": "true",
    "drift_sample": "1000",
}

with DAG(
    dag_id="bert_embed_reembed",
    schedule="0 3 * * *",
    start_date=datetime.datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["bert-embed"],
) as dag:
  DataflowStartFlexTemplateOperator(
      task_id="reembed",
      project_id=PROJECT,
      location=REGION,
      wait_until_finished=True,
      body={
          "launchParameter": {
              "jobName": "bert-embed-{{ ts_nodash | lower }}",
              "containerSpecGcsPath": TEMPLATE,
              "parameters": PARAMETERS,
              "environment": {"tempLocation": f"{BUCKET}/tmp", "maxWorkers": 20},
          },
      },
  )
