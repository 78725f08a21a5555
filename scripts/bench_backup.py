#!/usr/bin/env python3
"""Backup benchmark against a real `bulkhead serve` (release build):

1. Throughput for a large tenant (`--size-mb`, 1024 by default): `bulkhead
   backups create` and `backups restore --to` of a tenant whose database
   holds that much (random, incompressible rows), beside the bare pipeline
   on the same data in the same run: `sqlite3 .backup` then `age -r` for
   the embedded default, `pg_dump -Fc | age -r` for a silo tenant on
   PostgreSQL. Also the server's resident memory, sampled every 50 ms
   while it takes the backup (flat means it does not grow with the size).
2. A round of scheduled backups for `--tenants` small tenants (1,000 by
   default) at each `--concurrency` (1 4 8): the time from the server's
   start to the scheduler's report that it took them all.

    cargo build --release -p bulkhead
    scripts/bench_backup.py --size-mb 1024 --tenants 1000 --concurrency 1 4 8

Installs sqlite3 and age with apt-get when missing. Uses only the standard
library; everything it makes is removed at the end.
"""

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import ADMIN, BIN, BenchServer, ensure  # noqa: E402


def cli(server, *args):
    env = {**os.environ, "BULKHEAD_DATA_DIR": server.data_dir}
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True, env=env).stdout


class RssSampler:
    """The peak and the samples of a process's resident memory."""

    def __init__(self, pid):
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for line in open(f"/proc/{self.pid}/status"):
                if line.startswith("VmRSS:"):
                    self.samples.append(int(line.split()[1]) / 1024)
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join()


def timed(work):
    start = time.monotonic()
    result = work()
    return time.monotonic() - start, result


def fill_sqlite(path, size_mb):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, body BLOB)")
    chunk = 1 << 20
    for _ in range(size_mb):
        db.execute("INSERT INTO blobs (body) VALUES (randomblob(?))", (chunk,))
    db.commit()
    db.close()


def recipient(server, tenant, work):
    key = os.path.join(work, f"{tenant}.key")
    cli(server, "backups", "key", "export", "--tenant", tenant, "-f", key)
    return key, subprocess.run(["age-keygen", "-y", key], check=True, capture_output=True, text=True).stdout.strip()


def large(size_mb, store):
    print(f"\n## a {size_mb} MB tenant, {'embedded SQLite' if store == 'embedded' else 'silo on PostgreSQL'}")
    # The scheduler's first round runs at the start, before the tenant
    # exists; the next would be a day later: only the timed backup runs.
    with BenchServer(store, extra_config='[backup]\ncheck_every = "24h"\n') as server:
        work = tempfile.mkdtemp(prefix="bulkhead-bench-backup-")
        try:
            server.create([("big", "enterprise")])
            key, age_recipient = recipient(server, "big", work)
            if store == "embedded":
                fill_sqlite(os.path.join(server.data_dir, "tenants", "big", "data.db"), size_mb)
                db = os.path.join(server.data_dir, "tenants", "big", "data.db")
                bare_label = "sqlite3 .backup, then age -r"

                def bare():
                    copy = os.path.join(work, "bare.db")
                    subprocess.run(["sqlite3", db, f".backup {copy}"], check=True)
                    subprocess.run(["age", "-r", age_recipient, "-o", os.path.join(work, "bare.age"), copy], check=True)
                    os.remove(copy)
            else:
                issued = cli(server, "-o", "json", "creds", "issue", "--tenant", "big", "--ttl", "1h")
                url = re.search(r'"url": "([^"]+)"', issued).group(1)
                subprocess.run(["psql", url, "-qc", "CREATE TABLE blobs (id bigserial PRIMARY KEY, body bytea)"], check=True)
                # 1 MB of random bytes a row, made by the server.
                subprocess.run(["psql", url, "-qc",
                                "INSERT INTO blobs (body) SELECT decode(string_agg(md5(random()::text), ''), 'hex') "
                                f"FROM generate_series(1, {size_mb}) AS r, generate_series(1, 65536) AS c GROUP BY r"],
                               check=True)
                database = re.search(r"/([^/?]+)(\?|$)", url).group(1)
                dump_url = ADMIN.rsplit("/", 1)[0] + "/" + database
                bare_label = "pg_dump -Fc | age -r"

                def bare():
                    out = os.path.join(work, "bare.age")
                    subprocess.run(f"pg_dump -Fc '{dump_url}' | age -r {age_recipient} -o {out}", shell=True, check=True)

            bare_seconds, _ = timed(bare)
            with RssSampler(server.server.pid) as rss:
                seconds, out = timed(lambda: cli(server, "-o", "json", "backups", "create", "--tenant", "big"))
            backup_id = re.search(r'"id": "([^"]+)"', out).group(1)
            size = int(re.search(r'"size": (\d+)', out).group(1)) / (1 << 20)
            restore_seconds, _ = timed(lambda: cli(server, "backups", "restore", "--tenant", "big", backup_id, "--to", "big-copy"))
            print(f"  archive {size:.0f} MB")
            print(f"  bulkhead backups create      {seconds:6.1f} s   {size_mb / seconds:6.1f} MB/s")
            print(f"  {bare_label:28} {bare_seconds:6.1f} s   {size_mb / bare_seconds:6.1f} MB/s")
            print(f"  bulkhead backups restore --to {restore_seconds:5.1f} s   {size_mb / restore_seconds:6.1f} MB/s")
            print(f"  server RSS while backing up: start {rss.samples[0]:.0f} MB, peak {max(rss.samples):.0f} MB "
                  f"({len(rss.samples)} samples)")
        finally:
            shutil.rmtree(work, ignore_errors=True)


def scheduled(tenants, concurrencies):
    print(f"\n## a scheduled round for {tenants} tenants (embedded SQLite, starter plan)")
    for concurrency in concurrencies:
        config = f'[backup]\ncheck_every = "1h"\nconcurrency = {concurrency}\n'
        with BenchServer("embedded", extra_config=config) as server:
            server.create([(f"t{i:05d}", "starter") for i in range(tenants)])
            # The first round ran at the start, over no tenants: restart so
            # that the first round finds them all due, and time it.
            server.server.terminate()
            server.server.wait()
            server.log.close()
            log = os.path.join(server.work, "round.log")
            server.log = open(log, "w")
            start = time.monotonic()
            server.server = subprocess.Popen(server.command, stdout=subprocess.DEVNULL, stderr=server.log,
                                             env={**os.environ, "BULKHEAD_LOG": "info"})
            while "took and expired scheduled backups" not in open(log).read():
                if server.server.poll() is not None:
                    sys.exit(open(log).read())
                time.sleep(0.05)
            seconds = time.monotonic() - start
            count = len(os.listdir(os.path.join(server.data_dir, "backups", "tenants")))
            print(f"  concurrency {concurrency}: {count} tenants backed up in {seconds:6.1f} s "
                  f"({seconds / count * 1000:.0f} ms a tenant)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    ensure("sqlite3", "sqlite3")
    ensure("age", "age")
    large(args.size_mb, "embedded")
    if not args.skip_postgres:
        large(args.size_mb, "postgres")
    scheduled(args.tenants, args.concurrency)


if __name__ == "__main__":
    main()
