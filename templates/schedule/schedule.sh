#!/usr/bin/env bash
# Deploys templates/schedule/workflow.yaml and a Cloud Scheduler job that runs it every night at 03:00.
# usage: PROJECT=p REGION=r BUCKET=gs://b SERVICE_ACCOUNT=sa@p.iam.gserviceaccount.com templates/schedule/schedule.sh
# The service account needs roles/workflows.invoker (for the scheduler) and roles/dataflow.developer plus
# storage access (for the workflow's launch).
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET (gs://...)}"
: "${SERVICE_ACCOUNT:?set SERVICE_ACCOUNT}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gcloud workflows deploy bert-embed-reembed --project "$PROJECT" --location "$REGION" \
  --source "$here/workflow.yaml" --service-account "$SERVICE_ACCOUNT"
workflows_api="https://workflowexecutions.googleapis.com/v1/projects/${PROJECT}/locations/${REGION}"
gcloud scheduler jobs create http bert-embed-nightly --project "$PROJECT" --location "$REGION" \
  --schedule "0 3 * * *" --time-zone "Etc/UTC" --http-method POST \
  --uri "${workflows_api}/workflows/bert-embed-reembed/executions" \
  --message-body "{\"argument\": \"{\\\"region\\\": \\\"${REGION}\\\", \\\"bucket\\\": \\\"${BUCKET}\\\"}\"}" \
  --oauth-service-account-email "$SERVICE_ACCOUNT"
