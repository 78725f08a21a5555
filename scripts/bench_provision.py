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
import datetime
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "bulkhead")
ADMIN = os.environ.get("BULKHEAD_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")


def psql(sql):
    subprocess.run(["psql", ADMIN, "-qAtc", sql], check=True, stdout=subprocess.DEVNULL)


def database_url(name):
    return ADMIN.rsplit("/", 1)[0] + "/" + name


class Api:
    """One keep-alive connection per thread."""

    def __init__(self, url, token):
        self.host, self.port = url.removeprefix("http://").split(":")
        self.headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        self.local = threading.local()

    def call(self, method, path, body=None):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
        conn.request(method, path, json.dumps(body) if body is not None else None, self.headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None


def percentile(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


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

    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run `cargo build --release` first")

    work = tempfile.mkdtemp(prefix="bulkhead-bench-")
    data_dir = os.path.join(work, "data")
    config = os.path.join(work, "bulkhead.toml")
    command = [BIN, "serve", "--data-dir", data_dir, "--api-listen", "127.0.0.1:0", "--config", config]
    control_db = None
    prefix = "bn" + uuid.uuid4().hex[:5] + "_"
    with open(config, "w") as f:
        f.write(f"[reconciler]\nworkers = {args.workers}\n")
        if args.store == "postgres":
            control_db = "bh_bench_" + uuid.uuid4().hex[:12]
            psql(f'CREATE DATABASE "{control_db}"')
            command += ["--store", database_url(control_db)]
            f.write(f'\n[[regions]]\nname = "local"\ndatabases = "{ADMIN}"\ndatabase_prefix = "{prefix}"\n')

    log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "BULKHEAD_LOG": "warn"})
    try:
        api_url_file = os.path.join(data_dir, "api.url")
        for _ in range(300):
            if os.path.exists(api_url_file):
                break
            time.sleep(0.05)
        url = open(api_url_file).read().strip()
        token = open(os.path.join(data_dir, "operator.token")).read().strip()
        api = Api(url, token)

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
        for label, values in [("create (API round trip)", list(create_ms.values())), ("provision (created -> active)", provision_ms)]:
            print(f"  {label:32} p50 {percentile(values, 50):8.1f} ms   p95 {percentile(values, 95):8.1f} ms   "
                  f"max {max(values):8.1f} ms")
        print(f"  total {total:.2f} s for {args.n} tenants = {args.n / total:.0f} tenants/s")

        # Clean up through the product itself: purge every tenant.
        purge_started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.c) as pool:
            list(pool.map(lambda n: api.call("DELETE", f"/v1/tenants/{n}?purge=true"), names))
        while api.call("GET", "/v1/tenants?limit=1")[1]["tenants"] or \
                api.call("GET", "/v1/tenants?limit=1&state=deleted")[1]["tenants"]:
            time.sleep(0.05)
        print(f"  purge {time.perf_counter() - purge_started:.2f} s for {args.n} tenants")
    finally:
        server.terminate()
        server.wait()
        log.close()
        if control_db:
            psql(f'DROP DATABASE IF EXISTS "{control_db}" WITH (FORCE)')
            # The region's shared pool database outlives its tenants by design.
            psql(f'DROP DATABASE IF EXISTS "{prefix}pool" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


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
        print(f"  {'DDL only':32} p50 {percentile(per_silo, 50):8.1f} ms   p95 {percentile(per_silo, 95):8.1f} ms   "
              f"max {max(per_silo):8.1f} ms")
    finally:
        drop = "".join(f'DROP DATABASE IF EXISTS "{prefix}{i}"; DROP ROLE IF EXISTS "{prefix}{i}";\n' for i in range(n))
        subprocess.run(["psql", ADMIN, "-q"], input=drop, capture_output=True, text=True)


if __name__ == "__main__":
    main()
