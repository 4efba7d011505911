#!/usr/bin/env bash
# Builds the image (CPU, or GPU with VARIANT=gpu) with Cloud Build and the Flex Template spec that points at it.
# usage: PROJECT=p REGION=r BUCKET=gs://b [VARIANT=gpu] [TAG=v1] templates/build.sh
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET (gs://...)}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
variant="${VARIANT:-cpu}"
dockerfile="templates/Dockerfile"; [ "$variant" = gpu ] && dockerfile="templates/Dockerfile.gpu"
image="${REGION}-docker.pkg.dev/${PROJECT}/bert-embed/bert-embed-${variant}:${TAG:-latest}"
cd "$root"
cat > /tmp/bert-embed-cloudbuild.yaml <<YAML
steps:
- name: gcr.io/cloud-builders/docker
  args: [build, -f, ${dockerfile}, -t, ${image}, .]
images: [${image}]
YAML
gcloud builds submit --project "$PROJECT" --config /tmp/bert-embed-cloudbuild.yaml .
gcloud dataflow flex-template build "${BUCKET}/templates/bert-embed-${variant}.json" \
  --project "$PROJECT" --image "$image" --sdk-language PYTHON --metadata-file templates/metadata.json
echo "template: ${BUCKET}/templates/bert-embed-${variant}.json (image ${image})"
