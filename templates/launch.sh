#!/usr/bin/env bash
# Launches the Flex Template. Job parameters go after the script's own, as name=value pairs:
#   PROJECT=p REGION=r BUCKET=gs://b [VARIANT=gpu] templates/launch.sh input=gs://b/corpus/*.jsonl \
#     input_format=jsonl output=gs://b/emb/run-$(date +%Y%m%d)/emb model=gs://b/models/mybert previous=latest:gs://b/emb
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET (gs://...)}"
variant="${VARIANT:-cpu}"
# Joined with gcloud's alternative delimiter (see `gcloud topic escaping`): values may contain commas
# (brace globs, layers=0,-1).
params="^~^$(IFS='~'; echo "$*")"
extra=()
if [ "$variant" = gpu ]; then
  # One GPU per worker and one SDK process per worker: that process loads one encoder copy onto the GPU.
  # MPS=1 instead shares the GPU between one SDK process per vCPU (see templates/README.md).
  accelerator="worker_accelerator=type:${GPU_TYPE:-nvidia-l4};count:1;install-nvidia-driver"
  experiments="use_runner_v2,no_use_multiple_sdk_containers"
  if [ "${MPS:-0}" = 1 ]; then
    accelerator+=";use_nvidia_mps"
    experiments="use_runner_v2"
  fi
  # Passed with the job parameters, in the one --parameters flag.
  params+="~dataflow_service_options=${accelerator}"
  extra+=(--worker-machine-type "${MACHINE_TYPE:-g2-standard-8}" --additional-experiments "$experiments")
fi
gcloud dataflow flex-template run "bert-embed-$(date +%Y%m%d-%H%M%S)" --project "$PROJECT" --region "$REGION" \
  --template-file-gcs-location "${BUCKET}/templates/bert-embed-${variant}.json" \
  --temp-location "${BUCKET}/tmp" --parameters "$params" ${extra[@]+"${extra[@]}"}
