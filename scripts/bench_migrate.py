#!/usr/bin/env python3
"""Rolling-migration benchmark: N silo tenants on PostgreSQL, one migration
rolled across all of them at each concurrency, through `POST /v1/migrations`
of a real `bulkhead serve` (release build).

    scripts/bench_migrate.py -n 200 -k 1 4 8

Each run applies a new file to every database (a table, an index, 1,000
rows), so every run does the same work. Reported per run: the job's wall
time (created_at -> finished_at, as the server recorded it), one database's
mean time (the wall time at K=1 / N), and the time against the aim
N / K x one database's time.

Uses only the standard library. Everything it makes is removed at the end.
"""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import BenchServer, database_url, parse_time  # noqa: E402

FILE = """CREATE TABLE items_{v} (id bigserial PRIMARY KEY, owner uuid, label text NOT NULL);
CREATE INDEX ON items_{v} (owner);
INSERT INTO items_{v} (label) SELECT 'item ' || i FROM generate_series(1, 1000) AS i;
"""


def machine_ticks():
    """(idle, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="silo tenants")
    parser.add_argument("-k", type=int, nargs="+", default=[1, 4, 8], help="concurrencies to run")
    args = parser.parse_args()

    with BenchServer("postgres") as server:
        api = server.api
        names = [f"bench-{i:05d}" for i in range(args.n)]

        server.create([(name, "enterprise") for name in names])

        files = []
        one_db = None
        print(f"silo tenants={args.n} (PostgreSQL), one file per run: a table, an index, 1,000 rows")
        for k in args.k:
            v = len(files) + 1
            files.append({"name": f"{v:04d}_items_{v}.sql", "sql": FILE.format(v=v)})
            idle0, total0 = machine_ticks()
            status, job = api.call("POST", "/v1/migrations", {
                "files": files, "canary": "0", "concurrency": k, "halt_after": 1,
            })
            if status != 202:
                raise RuntimeError(f"start: {status} {job}")
            while job["state"] == "running":
                time.sleep(0.1)
                job = api.call("GET", f"/v1/migrations/{job['id']}")[1]
            if job["state"] != "succeeded" or job["counts"].get("migrated") != args.n:
                raise RuntimeError(f"K={k}: {job['state']} {job['counts']}")
            idle1, total1 = machine_ticks()
            busy = 100 * (1 - (idle1 - idle0) / max(1, total1 - total0))
            wall = (parse_time(job["finished_at"]) - parse_time(job["created_at"])).total_seconds()
            if one_db is None:
                one_db = wall / args.n if k == 1 else None
            aim = f"  aim N/K x one = {args.n / k * one_db:.2f} s ({wall / (args.n / k * one_db):.2f}x)" if one_db else ""
            print(f"  K={k}: {wall:.2f} s = {wall / args.n * 1000:.1f} ms per database{aim}; machine {busy:.0f}% busy")
        # The floor on this machine: the same file by psql, as a superuser,
        # one transaction per database, K at a time (what a script run by
        # hand would do), on the same databases.
        databases = []
        for name in names:
            steps = api.call("GET", f"/v1/tenants/{name}")[1]["steps"]
            databases += [s["output"]["database"] for s in steps if s["name"] == "create_database"]
        print("  baseline: psql -1 -f FILE per database, as a superuser, K at a time")
        for k in args.k:
            v = len(files) + 1
            files.append(None)
            with tempfile.NamedTemporaryFile("w", suffix=".sql") as sql:
                sql.write(FILE.format(v=v))
                sql.flush()

                def apply(db):
                    subprocess.run(["psql", "-qX", "-v", "ON_ERROR_STOP=1", "-1", "-f", sql.name,
                                    database_url(db)], check=True, stdout=subprocess.DEVNULL)

                idle0, total0 = machine_ticks()
                started = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(k) as pool:
                    list(pool.map(apply, databases))
                wall = time.perf_counter() - started
                idle1, total1 = machine_ticks()
                busy = 100 * (1 - (idle1 - idle0) / max(1, total1 - total0))
            print(f"  K={k}: {wall:.2f} s = {wall / args.n * 1000:.1f} ms per database; machine {busy:.0f}% busy")
        server.purge(names)


if __name__ == "__main__":
    main()
