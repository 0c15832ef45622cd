"""Parses Prometheus text exposition in the file named by the first argument with the reference Python client and prints its
families as JSON: [{"name", "type", "samples": [{"name", "labels", "value"}]}], in order.

Used by the namespace tests, so that what they check is what a real scraper reads (a family
whose HELP/TYPE lines are separated from its samples comes out as a second, untyped family).
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = [
    {
        "name": f.name,
        "type": f.type,
        "samples": [
            {"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples
        ],
    }
    for f in text_string_to_metric_families(open(sys.argv[1], encoding="utf-8").read())
]
json.dump(families, sys.stdout)
