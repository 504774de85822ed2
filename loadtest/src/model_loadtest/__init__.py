"""The load test: locust's traffic (locustfile), its V2 request bodies (v2_requests), its
response checks (response_checks) and its pass/fail thresholds (thresholds)."""
