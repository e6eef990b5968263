"""Parses a Prometheus text exposition (stdin) with the Prometheus project's
own Python parser and prints its samples as JSON lines:
{"family": ..., "type": ..., "name": ..., "labels": {...}, "value": ...}.
The tests use it so `/metrics` is read by a real parser, not by ours."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps({
            "family": family.name,
            "type": family.type,
            "name": s.name,
            "labels": s.labels,
            "value": s.value,
        }))
