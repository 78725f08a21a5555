#!/usr/bin/env python3
"""Provisioning benchmark: create N tenants through the control API of a real
`bulkhead serve` (release build) and report per-tenant latency and the total.

    scripts/bench_provision.py --store embedded -n 1000 --paced
    scripts/bench_provision.py --store postgres -n 1000 -c 8

--paced creates one tenant at a time and waits until it is active before the
next: the latency of one provisioning on an otherwise idle server. Without it,
-c clients create tenants as fast as the API takes them: a burst, whose
latencies include queueing behind the tenants ahead and whose total measures
throughput.

Two latencies per tenant:
  create     the POST /v1/tenants round trip, as the client saw it
  provision  created_at -> provisioned_at, as the server recorded it (queueing
             behind other tenants included)
Total is the wall time from the first POST until every tenant is active.

Uses only the standard library. Everything it makes (data directory, control
database, tenant databases) is removed at the end.
"""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import ADMIN, BenchServer, parse_time, report  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["embedded", "postgres"], default="embedded")
    parser.add_argument("-n", type=int, default=1000, help="tenants to create")
    parser.add_argument("-c", type=int, default=8, help="concurrent API clients")
    parser.add_argument("--plan", default="enterprise", help="plan of every tenant (enterprise = silo)")
    parser.add_argument("--workers", type=int, default=16, help="reconciler workers")
    parser.add_argument("--paced", action="store_true", help="one tenant at a time, each waited for")
    parser.add_argument("--baseline", action="store_true",
                        help="no Bulkhead: time the bare DDL of a silo (CREATE ROLE, CREATE DATABASE, "
                             "REVOKE) n times in one psql session, the floor for --store postgres")
    args = parser.parse_args()
    if args.baseline:
        return baseline(args.n)

    with BenchServer(args.store, workers=args.workers) as server:
        api = server.api
        names = [f"bench-{i:05d}" for i in range(args.n)]
        create_ms = {}

        def create(name):
            started = time.perf_counter()
            status, body = api.call("POST", "/v1/tenants", {"name": name, "plan": args.plan})
            create_ms[name] = (time.perf_counter() - started) * 1000
            if status != 202:
                raise RuntimeError(f"{name}: {status} {body}")
            while args.paced and api.call("GET", f"/v1/tenants/{name}")[1]["state"] == "provisioning":
                time.sleep(0.01)

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(1 if args.paced else args.c) as pool:
            list(pool.map(create, names))
        while True:
            status, page = api.call("GET", "/v1/tenants?state=provisioning&limit=1")
            if not page["tenants"]:
                break
            time.sleep(0.01)
        total = time.perf_counter() - started

        tenants = []
        after = ""
        while True:
            _, page = api.call("GET", f"/v1/tenants?limit=1000&after={after}")
            tenants += page["tenants"]
            if "next_after" not in page:
                break
            after = page["next_after"]
        failed = [t["name"] for t in tenants if t["state"] != "active"]
        if failed:
            raise RuntimeError(f"{len(failed)} tenants did not become active: {failed[:5]}")
        provision_ms = [
            (parse_time(t["provisioned_at"]) - parse_time(t["created_at"])).total_seconds() * 1000 for t in tenants
        ]
        isolations = sorted({t["isolation"] for t in tenants})

        mode = "paced" if args.paced else f"burst clients={args.c}"
        print(f"store={args.store} tenants={args.n} plan={args.plan} isolation={','.join(isolations)} "
              f"{mode} workers={args.workers}")
        report("create (API round trip)", list(create_ms.values()))
        report("provision (created -> active)", provision_ms)
        print(f"  total {total:.2f} s for {args.n} tenants = {args.n / total:.0f} tenants/s")

        # Clean up through the product itself: purge every tenant.
        purge_started = time.perf_counter()
        server.purge(names, args.c)
        print(f"  purge {time.perf_counter() - purge_started:.2f} s for {args.n} tenants")


def baseline(n):
    prefix = "bl" + uuid.uuid4().hex[:6] + "_"
    script = "\\timing on\n" + "".join(
        f'CREATE ROLE "{prefix}{i}" NOLOGIN; CREATE DATABASE "{prefix}{i}" OWNER "{prefix}{i}"; '
        f'REVOKE ALL ON DATABASE "{prefix}{i}" FROM PUBLIC;\n' for i in range(n))
    try:
        out = subprocess.run(["psql", ADMIN, "-q"], input=script, capture_output=True, text=True, check=True).stdout
        times = [float(line.split()[1]) for line in out.splitlines() if line.startswith("Time:")]
        per_silo = [sum(times[i:i + 3]) for i in range(0, len(times), 3)]
        print(f"baseline: bare silo DDL over one psql session, {n} silos")
        report("DDL only", per_silo)
    finally:
        drop = "".join(f'DROP DATABASE IF EXISTS "{prefix}{i}"; DROP ROLE IF EXISTS "{prefix}{i}";\n' for i in range(n))
        subprocess.run(["psql", ADMIN, "-q"], input=drop, capture_output=True, text=True)


if __name__ == "__main__":
    main()
