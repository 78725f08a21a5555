#!/usr/bin/env python3
"""Seeds synthetic tenants straight into a stopped server's SQLite store,
for scripts/bench_gateway.sh: `seed_tenants.py DB TEMPLATE TOTAL` adds
active `professional` tenants until the store holds TOTAL tenants.

Each new tenant gets, in one transaction, a `tenants` row (a fresh uuid;
isolation `silo`, as every tenant on the embedded store: it cannot pool),
the TEMPLATE tenant's `tenant_steps` rows (all applied, their outputs
naming the new tenant), so that the reconciler's pass at start finds
nothing to do, an `identity_realms` row and an `identity_keys` row copied
from the TEMPLATE (its public JWK under a new kid: the private half is not
needed, nothing signs for these tenants), and one `apis` row with the
template's first API spec. Nothing else a real tenant has (its directory,
data key, audit key) is made: the gateway reads none of it. Prints how many
tenants it added and how long it took.
"""

import sqlite3
import sys
import time
import uuid


def main(db, template, total):
    started = time.monotonic()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("PRAGMA busy_timeout = 10000")
    row = con.execute(
        "SELECT id, region, created_at, updated_at, provisioned_at FROM tenants WHERE name = ?",
        (template,),
    ).fetchone()
    if row is None:
        sys.exit(f"seed: no tenant named {template}")
    tid, region, created, updated, provisioned = row
    realm = con.execute(
        "SELECT algorithm, default_ttl_secs, max_ttl_secs, created_at, updated_at "
        "FROM identity_realms WHERE tenant_id = ?", (tid,)).fetchone()
    key = con.execute(
        "SELECT kid, algorithm, public_jwk, created_at FROM identity_keys "
        "WHERE tenant_id = ? AND retired_at IS NULL ORDER BY created_at DESC LIMIT 1", (tid,)).fetchone()
    api = con.execute(
        "SELECT name, spec, created_at, updated_at FROM apis WHERE tenant_id = ? ORDER BY name LIMIT 1",
        (tid,)).fetchone()
    if realm is None or key is None or api is None:
        sys.exit(f"seed: {template} needs a realm, a signing key and an API to copy")
    steps = con.execute(
        "SELECT step, status, output, updated_at FROM tenant_steps WHERE tenant_id = ?", (tid,)).fetchall()
    have = con.execute("SELECT count(*) FROM tenants").fetchone()[0]
    first = con.execute("SELECT count(*) FROM tenants WHERE name LIKE 'syn-%'").fetchone()[0]
    add = max(0, total - have)
    kid, key_alg, jwk, key_created = key
    con.execute("BEGIN IMMEDIATE")
    for i in range(first, first + add):
        new = uuid.uuid4().bytes
        new_kid = uuid.uuid4().hex
        name = f"syn-{i:06d}"
        con.execute(
            "INSERT INTO tenants (id, name, plan, isolation, region, state, version, "
            "created_at, updated_at, provisioned_at) "
            "VALUES (?, ?, 'professional', 'silo', ?, 'active', 1, ?, ?, ?)",
            (new, name, region or "local", created, updated, provisioned or created),
        )
        con.executemany(
            "INSERT INTO tenant_steps (tenant_id, step, status, output, updated_at) VALUES (?, ?, ?, ?, ?)",
            [(new, step, status, output and output.replace(f"/{template}", f"/{name}").replace(kid, new_kid),
              at) for step, status, output, at in steps])
        con.execute(
            "INSERT INTO identity_realms (tenant_id, algorithm, default_ttl_secs, max_ttl_secs, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)", (new, *realm))
        con.execute(
            "INSERT INTO identity_keys (tenant_id, kid, algorithm, public_jwk, created_at) "
            "VALUES (?, ?, ?, ?, ?)", (new, new_kid, key_alg, jwk.replace(kid, new_kid), key_created))
        con.execute(
            "INSERT INTO apis (tenant_id, name, spec, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (new, *api))
    con.execute("COMMIT")
    con.close()
    print(f"seeded {add} tenants ({have + add} in all) in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
