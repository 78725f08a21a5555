#!/usr/bin/env python3
"""The runtime benchmark (issue 13), as root, on a real `bulkhead serve`
(release build, embedded store, temporary data directory) running the
sample app (examples/keyring) as confined workers:

1. The socket hop: GET /healthz of one tenant's keyring through the gateway
   (token check, routing, the worker's unix socket), against the same
   program started bare on a loopback port (the direct call) and on a unix
   socket behind nginx (a plain proxy hop), wrk with keep-alive.
2. N tenants (100) each running one keyring worker: how long until all
   serve, and the memory each tenant's three processes (stage one, init,
   the app) hold, as proportional set size.
3. A rollout of a new version across the N tenants at batch sizes 1, 10
   and 25 (canary 1, no pause): the time until it completes.
4. Tenant B's latency at a fixed rate (oha with latency correction):
   GET /items through the gateway at 500/s and its health check on its
   socket at 50/s, while tenant A is idle and while A's app fills its pids
   limit and keeps a child allocating until its memory limit's OOM kill.

    python3 scripts/bench_runtime.py [N [hop|bombs|tenants|rollouts ...]]

Needs target/release/bulkhead and target/release/keyring (`cargo build
--release`); installs wrk and nginx with apt-get and oha with cargo when
missing.
Prints Markdown; removes everything it made.
"""

import concurrent.futures
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit  # noqa: E402

KEYRING = os.path.join(os.path.dirname(benchkit.BIN), "keyring")
DURATION = os.environ.get("BENCH_DURATION", "10s")
UNLIMITED = {"rate_limit": {"requests_per_minute": 60000000, "burst": 1000000}}

# Fills its pids limit with sleeping children, frees two slots, then keeps
# a child allocating until the memory limit's OOM kill, again and again:
# the attack goes on without the worker itself ending.
HOSTILE = """
import os, signal, time
sleepers = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(3600); os._exit(0)
        sleepers.append(pid)
except OSError:
    pass
for pid in sleepers[-2:]:
    os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
print('pids limit reached after', len(sleepers), flush=True)
while True:
    pid = os.fork()
    if pid == 0:
        hoard = []
        while True:
            hoard.append(bytearray(8 << 20))
    os.waitpid(pid, 0)
"""


def wrk(url, headers=(), connections=64, duration=DURATION, unix=None):
    """Requests/s and the p50 and p99 latency (ms) wrk reports."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration}", "--latency", url]
    for header in headers:
        command[1:1] = ["-H", header]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(p):
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, latency(50), latency(99), int(errors.group(1)) if errors else 0


def oha(url, rate, headers=(), unix=None, duration=DURATION):
    """p50 and p99 (ms), requests/s and non-2xx of a fixed-rate load with
    latency correction (what a user sees, not what a closed loop shows)."""
    command = ["oha", "--no-tui", "-z", duration, "-q", str(rate), "-c", "8",
               "--latency-correction", "--output-format", "json"]
    for header in headers:
        command += ["-H", header]
    if unix:
        command += ["--unix-socket", unix]
    result = json.loads(subprocess.run(command + [url], check=True, capture_output=True).stdout)
    codes = result.get("statusCodeDistribution", {})
    bad = sum(n for c, n in codes.items() if not str(c).startswith("2"))
    p = result["latencyPercentiles"]
    return result["summary"]["requestsPerSec"], p["p50"] * 1000, p["p99"] * 1000, bad


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return int(re.search(r"^Pss:\s+(\d+) kB", f.read(), re.M).group(1))
    except (OSError, AttributeError):
        return 0


def processes():
    """pid → (ppid, command line) of every process."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            found[int(pid)] = (ppid, cmdline)
        except OSError:
            pass
    return found


class Bench:
    def __init__(self, server):
        self.server = server
        self.api = server.api
        status = self.api.call("GET", "/v1/status")[1]
        self.gateway = status["gateway_url"].removeprefix("http://")
        artifact = os.path.join(server.data_dir, "artifacts", "keyring", "1")
        os.makedirs(artifact, exist_ok=True)
        for d in (artifact, os.path.dirname(artifact)):
            os.chmod(d, 0o755)
        shutil.copy(KEYRING, os.path.join(artifact, "keyring"))
        self.artifact = artifact

    def call(self, method, path, body=None, ok=(200, 201, 202, 204)):
        status, answer = self.api.call(method, path, body)
        if status not in ok:
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return answer

    def tenant(self, name, plan="enterprise"):
        self.call("POST", "/v1/tenants", {"name": name, "plan": plan, "limits": UNLIMITED})

    def settled(self):
        while self.call("GET", "/v1/tenants?state=provisioning&limit=1")["tenants"]:
            time.sleep(0.05)

    def pepper(self, tenant):
        conn = http.client.HTTPConnection(self.api.host, int(self.api.port), timeout=30)
        conn.request("PUT", f"/v1/tenants/{tenant}/secrets/keyring/pepper", os.urandom(16).hex(),
                     {"authorization": self.api.headers["authorization"],
                      "content-type": "application/octet-stream"})
        response = conn.getresponse()
        response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"secret of {tenant}: {response.status}")

    def keyring(self, tenant, version="1"):
        spec = {"name": "keyring", "version": version, "command": ["/app/keyring"],
                "artifact": self.artifact, "secrets": [{"path": "keyring/pepper", "file": "pepper"}],
                "health": {"path": "/healthz"}}
        self.call("PUT", f"/v1/tenants/{tenant}/apps/keyring", spec)
        self.call("POST", f"/v1/tenants/{tenant}/apis",
                  {"name": "keyring", "prefix": "/keyring", "upstreams": ["app:keyring"],
                   "strip_prefix": True}, ok=(200, 201, 409))

    def token(self, tenant):
        return self.call("POST", f"/v1/tenants/{tenant}/tokens",
                         {"subject": "bench", "roles": ["analyst"], "ttl": "2h"})["token"]

    def running(self, tenant, app="keyring"):
        workers = self.call("GET", f"/v1/tenants/{tenant}/apps/{app}")["workers"]
        return all(w["state"] == "running" for w in workers)

    def serves(self, tenant, token):
        conn = http.client.HTTPConnection(self.gateway, timeout=5)
        try:
            conn.request("GET", "/keyring/healthz",
                         headers={"host": f"{tenant}.localhost", "authorization": f"Bearer {token}"})
            return conn.getresponse().status == 200
        except OSError:
            return False


def serving_keyring(bench, tenant):
    """The tenant, created, running keyring behind the gateway; its token."""
    bench.tenant(tenant)
    bench.settled()
    bench.pepper(tenant)
    bench.keyring(tenant)
    token = bench.token(tenant)
    while not bench.serves(tenant, token):
        time.sleep(0.1)
    return token


def socket_hop(bench, work):
    token = serving_keyring(bench, "hop")
    # The same program bare: on a loopback port, and on a unix socket
    # behind nginx.
    secrets = os.path.join(work, "secrets")
    os.makedirs(secrets, exist_ok=True)
    with open(os.path.join(secrets, "pepper"), "w") as f:
        f.write("bench")
    database = os.path.join(work, "bare.db")
    open(database, "w").close()
    port, proxy_port = benchkit.free_port(), benchkit.free_port()
    unix = os.path.join(work, "bare.sock")
    env = {**os.environ, "BULKHEAD_DATABASE_URL": f"sqlite:{database}", "BULKHEAD_SECRETS_DIR": secrets}
    bare = subprocess.Popen([KEYRING], env={**env, "KEYRING_LISTEN": f"127.0.0.1:{port}"},
                            stdout=subprocess.DEVNULL)
    behind = subprocess.Popen([KEYRING], env={**env, "BULKHEAD_SOCKET": unix}, stdout=subprocess.DEVNULL)
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""user root; worker_processes auto; pid {work}/nginx.pid; daemon off;
error_log {work}/nginx.log warn; events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {work}/t1; proxy_temp_path {work}/t2;
  fastcgi_temp_path {work}/t3; uwsgi_temp_path {work}/t4; scgi_temp_path {work}/t5;
  upstream app {{ server unix:{unix}; keepalive 64; }}
  server {{ listen 127.0.0.1:{proxy_port}; location / {{ proxy_pass http://app;
    proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
    nginx = subprocess.Popen(["nginx", "-p", work, "-c", conf, "-e", f"{work}/nginx.log"])
    try:
        time.sleep(1)
        rows = [
            ("keyring on a loopback port, called directly", wrk(f"http://127.0.0.1:{port}/healthz")),
            ("nginx → keyring's unix socket", wrk(f"http://127.0.0.1:{proxy_port}/healthz")),
            ("Bulkhead's gateway → the confined worker's socket",
             wrk(f"http://{bench.gateway}/keyring/healthz",
                 headers=["Host: hop.localhost", f"Authorization: Bearer {token}"])),
        ]
    finally:
        for p in (bare, behind, nginx):
            p.terminate()
            p.wait()
    print(f"\n### The socket hop: GET /healthz (one SQLite query), wrk -t2 -c64 -d{DURATION}\n")
    print("| path | requests/s | p50 | p99 | non-2xx |\n|---|---|---|---|---|")
    for label, (rate, p50, p99, bad) in rows:
        print(f"| {label} | {rate:,.0f} | {p50:.2f} ms | {p99:.2f} ms | {bad} |")
    bench.call("DELETE", "/v1/tenants/hop?purge=true")


def many_tenants(bench, count):
    names = [f"t{i:03}" for i in range(count)]
    started = time.monotonic()
    for name in names:
        bench.tenant(name, plan="starter")
    bench.settled()
    for name in names:
        bench.pepper(name)
        bench.keyring(name)
    while not all(bench.running(n) for n in names):
        time.sleep(0.2)
    took = time.monotonic() - started
    time.sleep(2)
    table = processes()
    workers = [pid for pid, (_, cmd) in table.items() if cmd.startswith("/app/keyring")]
    sandboxes = [pid for pid, (_, cmd) in table.items() if "__sandbox" in cmd and "probe" not in cmd]
    app_kib = sum(pss_kib(p) for p in workers)
    sandbox_kib = sum(pss_kib(p) for p in sandboxes)
    server_kib = pss_kib(bench.server.server.pid)
    print(f"\n### {count} tenants, one keyring worker each\n")
    print(f"Created, provisioned, deployed and all running in {took:.1f} s "
          f"({len(workers)} workers, {len(sandboxes)} sandbox processes).\n")
    print("| | total PSS | per tenant |\n|---|---|---|")
    print(f"| the app (keyring) | {app_kib / 1024:.1f} MiB | {app_kib / max(len(workers), 1):,.0f} KiB |")
    print(f"| its sandbox (stage one + init) | {sandbox_kib / 1024:.1f} MiB | "
          f"{sandbox_kib / max(len(workers), 1):,.0f} KiB |")
    print(f"| the server (control plane, gateway, supervisor) | {server_kib / 1024:.1f} MiB | "
          f"{server_kib / count:,.0f} KiB |")
    return names


def rollouts(bench, names):
    print(f"\n### A rollout across {len(names)} tenants (canary 1, no pause)\n")
    print("| batch | time to completed | tenants moved | failed |\n|---|---|---|---|")
    for n, batch in enumerate(["1", "10", "25"], start=2):
        version = str(n)
        started = time.monotonic()
        rollout = bench.call("POST", "/v1/rollouts",
                             {"app": "keyring", "version": version, "canary": 1, "batch": batch})
        while rollout["state"] in ("running", "paused"):
            time.sleep(0.2)
            rollout = bench.call("GET", f"/v1/rollouts/{rollout['id']}")
        took = time.monotonic() - started
        moved = sum(s["state"] == "moved" for s in rollout["steps"])
        failed = sum(s["state"] == "failed" for s in rollout["steps"])
        print(f"| {batch} | {took:.1f} s ({rollout['state']}) | {moved} | {failed} |")


def bombs(bench, rounds=3):
    """B's latency with A idle and with A bombing, in alternating rounds
    (the median of each kind is reported: on a shared 2-core VM one idle
    window's p99 can be twice the next one's)."""
    bench.tenant("ant", plan="starter")
    token = serving_keyring(bench, "bee")
    items = f"http://{bench.gateway}/keyring/items"
    headers = ["Host: bee.localhost", f"Authorization: Bearer {token}"]
    run = os.path.join(bench.server.data_dir, "tenants", "bee", "run")
    socket_path = os.path.join(run, next(f for f in os.listdir(run) if f.endswith(".sock")))

    def measure():
        # Both loads over the same window.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            requests = pool.submit(oha, items, 500, headers)
            health = pool.submit(oha, "http://localhost/healthz", 50, (), socket_path)
            return requests.result(), health.result()

    spec = {"name": "bomb", "version": "1", "command": ["/usr/bin/python3", "-c", HOSTILE],
            "limits": {"memory_mib": 64, "max_processes": 32}}
    timeline = []

    def bombed():
        watching = threading.Event()

        def watch():
            while not watching.is_set():
                try:
                    worker = bench.call("GET", "/v1/tenants/ant/apps/bomb")["workers"][0]
                    timeline.append((worker["state"], worker.get("pid")))
                    if worker["state"] == "failed":
                        # What the attacker can do with its own credentials:
                        # start it again, and again.
                        bench.call("POST", "/v1/tenants/ant/apps/bomb/start")
                except Exception:  # noqa: BLE001 - a missed sample is no result
                    pass
                time.sleep(0.1)

        bench.call("PUT", "/v1/tenants/ant/apps/bomb", spec)
        watcher = threading.Thread(target=watch)
        watcher.start()
        result = measure()
        watching.set()
        watcher.join()
        bench.call("DELETE", "/v1/tenants/ant/apps/bomb")
        time.sleep(1)
        return result

    oha(items, 500, headers, duration="5s")  # warm-up, not reported
    windows = {"idle": [], "bombing": []}
    for _ in range(rounds):
        windows["idle"].append(measure())
        windows["bombing"].append(bombed())
    print(f"\n### Tenant B while tenant A bombs (oha at a fixed rate with latency correction, "
          f"{rounds} alternating rounds of {DURATION} per kind, both loads at once; medians, "
          f"and each round's p99)\n")
    print("| B's | A | p50 | p99 | p99 of each round | non-2xx |\n|---|---|---|---|---|---|")
    for label, key in [("idle", "idle"), ("fork- and memory-bombing", "bombing")]:
        for what, i in [("GET /items through the gateway, 500/s", 0),
                        ("health check on its socket, 50/s", 1)]:
            runs = [w[i] for w in windows[key]]
            p50 = statistics.median(r[1] for r in runs)
            p99s = [r[2] for r in runs]
            bad = sum(r[3] for r in runs)
            each = ", ".join(f"{p:.2f}" for p in p99s)
            print(f"| {what} | {label} | {p50:.2f} ms | {statistics.median(p99s):.2f} ms | "
                  f"{each} | {bad} |")
    running = sum(1 for state, _ in timeline if state == "running")
    pids = {pid for state, pid in timeline if state == "running"}
    failed = sum(1 for i, (state, _) in enumerate(timeline)
                 if state == "failed" and (i == 0 or timeline[i - 1][0] != "failed"))
    print(f"\nA while bombing: running in {running} of {len(timeline)} samples (every 0.1 s), "
          f"{len(pids)} worker processes in turn (each killed whole at its memory limit, "
          f"restarted with backoff), marked failed (crash loop) {failed} times and started "
          f"again at once each time, as its owner may.")
    bee = bench.call("GET", "/v1/tenants/bee/apps/keyring")["workers"][0]
    print(f"B's worker: {bee['restarts']} restarts.")
    for tenant in ("bee", "ant"):
        bench.call("DELETE", f"/v1/tenants/{tenant}?purge=true")
    while bench.call("GET", "/v1/tenants?limit=1")["tenants"]:
        time.sleep(0.1)


def main():
    if os.geteuid() != 0:
        sys.exit("the runtime's layers need root")
    if not os.path.exists(KEYRING):
        sys.exit(f"{KEYRING} is missing: run `cargo build --release` first")
    benchkit.ensure("wrk", "wrk")
    benchkit.ensure("nginx", "nginx")
    if shutil.which("oha") is None:
        subprocess.run(["cargo", "install", "oha", "--locked", "--quiet"], check=True)
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    sections = set(sys.argv[2:]) or {"hop", "bombs", "tenants", "rollouts"}
    work = tempfile.mkdtemp(prefix="bulkhead-bench-runtime-")
    try:
        bench_server = benchkit.BenchServer("sqlite")
        bench_server.command += ["--gateway-listen", "127.0.0.1:0"]
        with bench_server as server:
            bench = Bench(server)
            if "hop" in sections:
                socket_hop(bench, work)
            if "bombs" in sections:
                bombs(bench)
            if sections & {"tenants", "rollouts"}:
                names = many_tenants(bench, count)
                if "rollouts" in sections:
                    rollouts(bench, names)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
