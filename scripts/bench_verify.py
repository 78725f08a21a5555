#!/usr/bin/env python3
"""`bulkhead verify isolation` on a live installation: N silo and P pool
tenants on PostgreSQL, the whole check timed through POST /v1/verify/isolation
of a real `bulkhead serve` (release build; BULKHEAD_BIN picks another binary,
e.g. an earlier build to compare against).

    scripts/bench_verify.py -n 100 -p 100 -r 3

Every tenant is probed with a fresh login of its own (made, used, dropped),
so the time grows with the tenants. Reports each run and the median.
Uses only the standard library; everything it makes is removed at the end.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import BIN, BenchServer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100, help="silo tenants")
    parser.add_argument("-p", type=int, default=100, help="pool tenants")
    parser.add_argument("-r", type=int, default=3, help="runs")
    args = parser.parse_args()

    with BenchServer("postgres") as server:
        api = server.api
        tenants = [(f"silo-{i:04d}", "enterprise") for i in range(args.n)]
        tenants += [(f"pool-{i:04d}", "professional") for i in range(args.p)]

        server.create(tenants)

        print(f"{BIN}\nsilo tenants={args.n} pool tenants={args.p} (PostgreSQL)")
        times = []
        for run in range(args.r):
            started = time.perf_counter()
            status, report = api.call("POST", "/v1/verify/isolation")
            took = time.perf_counter() - started
            if status != 200 or report["findings"]:
                raise RuntimeError(f"{status}: {report}")
            times.append(took)
            print(f"  run {run + 1}: {took:.2f} s")
        print(f"  median {statistics.median(times):.2f} s")
        server.purge([name for name, _ in tenants])


if __name__ == "__main__":
    main()
