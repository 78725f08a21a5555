"""What the benchmark scripts share: a real `bulkhead serve` (release build)
in a temporary data directory, optionally on a fresh PostgreSQL control
database with tenant databases under a throwaway prefix, a keep-alive API
client, and percentiles. Standard library only; everything made is removed
on exit.
"""

import datetime
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BULKHEAD_BIN") or os.path.join(ROOT, "target", "release", "bulkhead")
ADMIN = os.environ.get("BULKHEAD_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")


def psql(sql):
    subprocess.run(["psql", ADMIN, "-qAtc", sql], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PGOPTIONS": "-c client_min_messages=warning"})


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


def ensure(tool, package):
    """Installs Debian's `package` when `tool` is missing (as root)."""
    if shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"{tool} is missing and cannot be installed here (needs root and apt-get)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def free_port():
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=10):
    """Waits until something listens on 127.0.0.1:port."""
    for _ in range(seconds * 10):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def percentile(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def report(label, values):
    print(f"  {label:32} p50 {percentile(values, 50):8.1f} ms   p95 {percentile(values, 95):8.1f} ms   "
          f"max {max(values):8.1f} ms")


class BenchServer:
    """`with BenchServer("postgres") as server:` gives `server.api`,
    `server.data_dir` and `server.prefix`; leaving the block stops the
    server and drops what it made."""

    def __init__(self, store, workers=16, extra_config=""):
        if not os.path.exists(BIN):
            sys.exit(f"{BIN} is missing: run `cargo build --release` first")
        self.store = store
        self.work = tempfile.mkdtemp(prefix="bulkhead-bench-")
        self.data_dir = os.path.join(self.work, "data")
        self.prefix = "bn" + uuid.uuid4().hex[:5] + "_"
        self.control_db = None
        config = os.path.join(self.work, "bulkhead.toml")
        self.command = [BIN, "serve", "--data-dir", self.data_dir, "--api-listen", "127.0.0.1:0", "--config", config]
        with open(config, "w") as f:
            f.write(f"[reconciler]\nworkers = {workers}\n{extra_config}\n")
            if store == "postgres":
                self.control_db = "bh_bench_" + uuid.uuid4().hex[:12]
                psql(f'CREATE DATABASE "{self.control_db}"')
                self.command += ["--store", database_url(self.control_db)]
                f.write(f'\n[[regions]]\nname = "local"\ndatabases = "{ADMIN}"\ndatabase_prefix = "{self.prefix}"\n')

    def __enter__(self):
        self.log = open(os.path.join(self.work, "server.log"), "w")
        self.server = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=self.log,
                                       env={**os.environ, "BULKHEAD_LOG": "warn"})
        try:
            api_url_file = os.path.join(self.data_dir, "api.url")
            for _ in range(300):
                if os.path.exists(api_url_file):
                    break
                time.sleep(0.05)
            url = open(api_url_file).read().strip()
            token = open(os.path.join(self.data_dir, "operator.token")).read().strip()
            self.api = Api(url, token)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_):
        self.server.terminate()
        self.server.wait()
        self.log.close()
        if self.control_db:
            psql(f'DROP DATABASE IF EXISTS "{self.control_db}" WITH (FORCE)')
            # The region's shared pool database outlives its tenants by design.
            psql(f'DROP DATABASE IF EXISTS "{self.prefix}pool" WITH (FORCE)')
        shutil.rmtree(self.work, ignore_errors=True)

    def create(self, tenants, clients=8):
        """Creates the tenants ((name, plan) pairs) through the API and waits
        until none is provisioning."""
        import concurrent.futures

        def create(tenant):
            name, plan = tenant
            status, body = self.api.call("POST", "/v1/tenants", {"name": name, "plan": plan})
            if status != 202:
                raise RuntimeError(f"{name}: {status} {body}")

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(create, tenants))
        while self.api.call("GET", "/v1/tenants?state=provisioning&limit=1")[1]["tenants"]:
            time.sleep(0.05)

    def purge(self, names, clients=8):
        """Purges the tenants through the API and waits until they are gone."""
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda n: self.api.call("DELETE", f"/v1/tenants/{n}?purge=true"), names))
        while self.api.call("GET", "/v1/tenants?limit=1")[1]["tenants"] or \
                self.api.call("GET", "/v1/tenants?limit=1&state=deleted")[1]["tenants"]:
            time.sleep(0.05)
