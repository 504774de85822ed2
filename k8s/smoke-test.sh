#!/usr/bin/env bash
# After `kubectl apply -k k8s/overlays/minikube`: wait for the rollout, port-forward the
# API's Service to 127.0.0.1:PORT and check an answer: the seed's setosa example for
# iris_svc; for any other model, a V2 request of zeros built from its metadata.
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

ready=$(curl -sf "http://127.0.0.1:${port}/ready") \
  || { echo "smoke test: /ready did not answer 200; port-forward said:" >&2; cat "$log" >&2; exit 1; }
name=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["model_name"])' "$ready")

if [ "$name" = iris_svc ]; then
  body=$(curl -sf -X POST "http://127.0.0.1:${port}/predict" \
    -H 'Content-Type: application/json' -d '{"data": [[5.1, 3.5, 1.4, 0.2]]}') \
    || { echo "smoke test: /predict did not answer" >&2; exit 1; }
  echo "POST /predict {\"data\": [[5.1, 3.5, 1.4, 0.2]]} -> $body"
  python3 -c 'import json, sys; p = json.loads(sys.argv[1])["prediction"]; sys.exit(0 if p[0] >= 0.9 else "smoke test: setosa below 0.9")' "$body"
else
  # One row of zeros (false, "") per input, open dimensions of size 1: what the API's
  # own warm-up runs, so any model it serves takes it.
  metadata=$(curl -sf "http://127.0.0.1:${port}/v2/models/${name}")
  request=$(python3 -c '
import json, math, sys
inputs = []
for t in json.loads(sys.argv[1])["inputs"]:
    shape = [d if d >= 0 else 1 for d in t["shape"]]
    zero = {"BOOL": False, "BYTES": ""}.get(t["datatype"], 0)
    inputs.append({**t, "shape": shape, "data": [zero] * math.prod(shape)})
print(json.dumps({"inputs": inputs}))' "$metadata")
  body=$(curl -sf -X POST "http://127.0.0.1:${port}/v2/models/${name}/infer" \
    -H 'Content-Type: application/json' -d "$request") \
    || { echo "smoke test: POST /v2/models/${name}/infer did not answer 200" >&2; exit 1; }
  echo "POST /v2/models/${name}/infer (zeros) -> ${body:0:300}"
  python3 -c 'import json, sys; sys.exit(0 if json.loads(sys.argv[1])["outputs"] else "smoke test: no outputs")' "$body"
fi
echo "smoke test passed: model-load-api serves $ready"
