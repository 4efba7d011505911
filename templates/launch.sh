#!/usr/bin/env bash
# Launches the Flex Template. Job parameters go after the script's own, as name=value pairs:
#   PROJECT=p REGION=r BUCKET=gs://b [VARIANT=gpu] templates/launch.sh input=gs://b/corpus/*.jsonl \
#     input_format=jsonl output=gs://b/emb/run-$(date +%Y%m%d) model=gs://b/models/mybert
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET (gs://...)}"
variant="${VARIANT:-cpu}"
params="$(IFS=,; echo "$*")"
extra=()
if [ "$variant" = gpu ]; then
  # One SDK process per GPU: each process loads one encoder copy and places it on its GPU.
  extra+=(--worker-machine-type "${MACHINE_TYPE:-g2-standard-8}"
          --additional-experiments "use_runner_v2,no_use_multiple_sdk_containers"
          --parameters "dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver")
fi
gcloud dataflow flex-template run "bert-embed-$(date +%Y%m%d-%H%M%S)" --project "$PROJECT" --region "$REGION" \
  --template-file-gcs-location "${BUCKET}/templates/bert-embed-${variant}.json" \
  --temp-location "${BUCKET}/tmp" --parameters "$params" "${extra[@]}"
