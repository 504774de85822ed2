#!/usr/bin/env bash
# After `kubectl apply -k k8s/overlays/minikube`: wait for the rollout, port-forward the
# API's Service to 127.0.0.1:PORT and check the seed's setosa example.
#
#   bash k8s/smoke-test.sh [PORT]        (KUBECTL overrides the kubectl command)
set -euo pipefail
port=${1:-8080}
kubectl=${KUBECTL:-kubectl}
ns=model-load

$kubectl -n "$ns" rollout status deployment/fake-gcs --timeout=120s
$kubectl -n "$ns" rollout status deployment/model-load-api --timeout=300s

log=$(mktemp)
$kubectl -n "$ns" port-forward svc/model-load-api "127.0.0.1:${port}:8000" >"$log" 2>&1 &
forward=$!
trap 'kill "$forward" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 30); do
  curl -sf "http://127.0.0.1:${port}/ready" >/dev/null && break
  sleep 1
done

body=$(curl -sf -X POST "http://127.0.0.1:${port}/predict" \
  -H 'Content-Type: application/json' -d '{"data": [[5.1, 3.5, 1.4, 0.2]]}') \
  || { echo "smoke test: /predict did not answer; port-forward said:" >&2; cat "$log" >&2; exit 1; }
echo "POST /predict {\"data\": [[5.1, 3.5, 1.4, 0.2]]} -> $body"
python3 -c 'import json, sys; p = json.loads(sys.argv[1])["prediction"]; sys.exit(0 if p[0] >= 0.9 else "smoke test: setosa below 0.9")' "$body"
echo "smoke test passed: model-load-api serves $(curl -sf "http://127.0.0.1:${port}/ready")"
