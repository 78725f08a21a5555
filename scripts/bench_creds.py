#!/usr/bin/env python3
"""Dynamic database credential benchmark: issue N credentials for one silo
tenant through the control API of a real `bulkhead serve` (release build,
PostgreSQL store and region), one at a time, then revoke them all.

    scripts/bench_creds.py -n 500
    scripts/bench_creds.py -n 500 --baseline

Latencies:
  issue (API)     POST /v1/tenants/{t}/credentials round trip: the lease is
                  recorded, the login role created (CREATE ROLE ... LOGIN
                  PASSWORD ... VALID UNTIL ... IN ROLE owner; ALTER ROLE ...
                  SET role), the URL returned
  issue (CLI)     `bulkhead creds issue` as a user runs it, process start
                  included (the first --cli-n of the N)
  first query     connecting with the issued URL and running SELECT 1 (psql)
  revoke (API)    DELETE /v1/credentials/{lease}: sessions ended, role
                  dropped, lease marked

--baseline times the bare DDL of one lease (CREATE ROLE + ALTER ROLE, and
DROP ROLE) over one psql session: the floor under the issue and revoke
figures. Standard library only; everything made is removed at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import ADMIN, BIN, BenchServer, report  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="credentials to issue")
    parser.add_argument("--cli-n", type=int, default=50, help="of which issued through the CLI")
    parser.add_argument("--connect-n", type=int, default=50, help="issued credentials to log in with")
    parser.add_argument("--baseline", action="store_true", help="no Bulkhead: the bare DDL of a lease")
    args = parser.parse_args()
    if args.baseline:
        return baseline(args.n)

    # No sweeps during the run: every lease lives for the whole of it.
    with BenchServer("postgres", extra_config='[vault]\ncredential_sweep_every = "1h"') as server:
        api = server.api
        tenant = "bench-creds"
        status, body = api.call("POST", "/v1/tenants", {"name": tenant, "plan": "enterprise"})
        if status != 202:
            raise RuntimeError(f"{status} {body}")
        while api.call("GET", f"/v1/tenants/{tenant}")[1]["state"] == "provisioning":
            time.sleep(0.01)

        issue_ms, leases, urls = [], [], []
        for _ in range(args.n - args.cli_n):
            started = time.perf_counter()
            status, body = api.call("POST", f"/v1/tenants/{tenant}/credentials", {"ttl": "1h"})
            issue_ms.append((time.perf_counter() - started) * 1000)
            if status != 201:
                raise RuntimeError(f"{status} {body}")
            leases.append(body["lease"]["id"])
            urls.append(body["url"])

        cli_ms = []
        env = {**os.environ, "BULKHEAD_DATA_DIR": server.data_dir}
        for _ in range(args.cli_n):
            started = time.perf_counter()
            out = subprocess.run([BIN, "creds", "issue", "--tenant", tenant, "--ttl", "1h", "-o", "json"],
                                 env=env, capture_output=True, text=True, check=True).stdout
            cli_ms.append((time.perf_counter() - started) * 1000)
            leases.append(json.loads(out)["lease"]["id"])

        connect_ms = []
        for url in urls[:args.connect_n]:
            started = time.perf_counter()
            subprocess.run(["psql", url, "-qAtc", "SELECT 1"], check=True, stdout=subprocess.DEVNULL)
            connect_ms.append((time.perf_counter() - started) * 1000)

        revoke_ms = []
        for lease in leases:
            started = time.perf_counter()
            status, body = api.call("DELETE", f"/v1/credentials/{lease}")
            revoke_ms.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"{status} {body}")

        print(f"credentials={args.n} tenant=silo on PostgreSQL, issued one at a time")
        report("issue (API round trip)", issue_ms)
        if cli_ms:
            report("issue (`bulkhead creds issue`)", cli_ms)
        if connect_ms:
            report("first login + SELECT 1 (psql)", connect_ms)
        report("revoke (API round trip)", revoke_ms)
        server.purge([tenant])


def baseline(n):
    prefix = "bl" + uuid.uuid4().hex[:6] + "_"
    owner = f"{prefix}owner"
    setup = f'CREATE ROLE "{owner}" NOLOGIN;\n'
    issue = "".join(
        f"CREATE ROLE \"{prefix}{i}\" LOGIN PASSWORD 'pw{uuid.uuid4().hex}' VALID UNTIL 'infinity' "
        f"IN ROLE \"{owner}\" ADMIN CURRENT_USER; ALTER ROLE \"{prefix}{i}\" SET role = '{owner}';\n"
        for i in range(n))
    revoke = "".join(f'DROP ROLE "{prefix}{i}";\n' for i in range(n))
    try:
        subprocess.run(["psql", ADMIN, "-q"], input=setup, capture_output=True, text=True, check=True)
        out = subprocess.run(["psql", ADMIN, "-q"], input="\\timing on\n" + issue + revoke,
                             capture_output=True, text=True, check=True).stdout
        times = [float(line.split()[1]) for line in out.splitlines() if line.startswith("Time:")]
        issued = [sum(times[i:i + 2]) for i in range(0, 2 * n, 2)]
        print(f"baseline: bare lease DDL over one psql session, {n} leases")
        report("CREATE ROLE + ALTER ROLE", issued)
        report("DROP ROLE", times[2 * n:])
    finally:
        cleanup = "".join(f'DROP ROLE IF EXISTS "{prefix}{i}";\n' for i in range(n)) + f'DROP ROLE IF EXISTS "{owner}";\n'
        subprocess.run(["psql", ADMIN, "-q"], input=cleanup, capture_output=True, text=True)


if __name__ == "__main__":
    main()
