"""Checks an OpenMetrics text exposition read from stdin with the official Python client's
parser (prometheus_client.openmetrics.parser, which refuses anything the format does not
allow: a missing # EOF, a sample outside its family, a bad value or label). Prints each
family as `name type samples`, one per line; exits 1 with the parser's complaint otherwise."""

import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as error:  # the parser raises ValueError and friends
        print(f"invalid OpenMetrics exposition: {error!r}", file=sys.stderr)
        return 1
    for family in families:
        print(f"{family.name} {family.type} {len(family.samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
