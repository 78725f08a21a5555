"""The model-call path under load (issue 14): what the gateway adds to a chat
completion (identity, the registry lookup, the rate limit, the model
allowlist, the cost-cap check before the upstream, the meter on the answer
and the settlement after it), with budgets kept in the process and shared
through Redis, beside the model server called directly and a plain HTTP API
of the same tenant to the same server (identity, registry and rate limit
only).

    python3 scripts/bench_ai.py        # BENCH_DURATION=15s BENCH_CONNECTIONS="32 4"

The model server is nginx answering every request with one fixed chat
completion (with its `usage`), so that the figures are the gateway's, not a
model's. wrk (keep-alive, 2 threads) posts the same small chat call; p50
and p99 come from wrk's own latency distribution. Needs
target/release/bulkhead (`cargo build --release -p bulkhead`) and Redis
(BULKHEAD_TEST_REDIS, default redis://127.0.0.1:6379); installs wrk and
nginx with apt-get when missing (as root).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit  # noqa: E402

DURATION = os.environ.get("BENCH_DURATION", "15s")
# Full load, then a light one (4 connections, closed loop), where latency
# is the path's and not the queue's.
LOADS = [int(c) for c in os.environ.get("BENCH_CONNECTIONS", "32 4").split()]
REDIS = os.environ.get("BULKHEAD_TEST_REDIS", "redis://127.0.0.1:6379")
REPORT = os.path.join(benchkit.ROOT, "scripts", "bench", "report.lua")
ANSWER = json.dumps({
    "id": "c1", "object": "chat.completion", "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
})
CALL = json.dumps({"model": "bench-model", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "Say hello."}]})


def start_model(work):
    """nginx answering every request with ANSWER; returns (process, port)."""
    port = benchkit.free_port()
    os.makedirs(os.path.join(work, "tmp"))
    conf = os.path.join(work, "nginx.conf")
    answer = ANSWER.replace("'", "\\'")
    with open(conf, "w") as f:
        f.write(f"""user root; worker_processes 1; pid {work}/nginx.pid; daemon off;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off; client_body_temp_path {work}/tmp;
    keepalive_timeout 120s; keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type application/json; return 200 '{answer}'; }}
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    process = subprocess.Popen([nginx, "-p", work, "-c", conf, "-e", os.path.join(work, "error.log")])
    benchkit.wait_port(port)
    return process, port


def wrk(work, url, host, token, warmup):
    """wrk runs posting CALL to `url` as `host`, one per load; wrk's BENCH
    lines as dicts."""
    script = os.path.join(work, "post.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(CALL)}\n'
                f'wrk.headers["Content-Type"] = "application/json"\n')
        if host:
            f.write(f'wrk.headers["Host"] = "{host}"\nwrk.headers["Authorization"] = "Bearer {token}"\n')
        f.write(open(REPORT).read())
    runs = []
    for connections in LOADS:
        base = ["wrk", "-t2", f"-c{connections}", "--latency", "-s", script, url]
        subprocess.run(base[:1] + ["-d", warmup] + base[1:], check=True, capture_output=True)
        out = subprocess.run(base[:1] + ["-d", DURATION] + base[1:], check=True,
                             capture_output=True, text=True).stdout
        line = next(l for l in out.splitlines() if l.startswith("BENCH "))
        runs.append(dict(kv.split("=") for kv in line.split()[1:]))
    return runs


def cli(server, *args):
    env = {**os.environ, "BULKHEAD_DATA_DIR": server.data_dir}
    return subprocess.run([benchkit.BIN, *args], check=True, env=env, capture_output=True,
                          text=True).stdout.strip()


def gateway_rows(model_port, redis_prefix, work):
    """Rows through a real `bulkhead serve`: the plain API, then the llm API."""
    config = '[prices."bench-model"]\ninput = 150000\noutput = 600000\n'
    if redis_prefix:
        config += f'[gateway]\nredis = "{REDIS}"\nredis_prefix = "{redis_prefix}"\n'
    bench_server = benchkit.BenchServer("sqlite", extra_config=config)
    bench_server.command += ["--gateway-listen", "127.0.0.1:0"]
    with bench_server as server:
        server.create([("bench", "professional")])
        cli(server, "tenants", "update", "bench", "--rate-limit", "60000000", "--burst", "1000000",
            "--cost-caps", "1000000000/1000000000")
        upstream = f"http://127.0.0.1:{model_port}"
        cli(server, "apis", "create", "--tenant", "bench", "llm", "--prefix", "/v1", "--type", "llm",
            "--model", "bench-model", "--upstream", upstream)
        cli(server, "apis", "create", "--tenant", "bench", "plain", "--prefix", "/plain",
            "--upstream", upstream)
        token = cli(server, "auth", "token", "--tenant", "bench", "--subject", "bench")
        gateway = server.api.call("GET", "/v1/status")[1]["gateway_url"]
        host = f"bench.localhost:{gateway.rsplit(':', 1)[1]}"
        time.sleep(1)
        where = "rate limit and budget in Redis" if redis_prefix else "budget in the process"
        rows = []
        if not redis_prefix:
            rows.append(("gateway, plain API (identity, route, rate limit)",
                         wrk(work, f"{gateway}/plain/chat", host, token, "3s")))
        rows.append((f"gateway, llm API, {where}",
                     wrk(work, f"{gateway}/v1/chat/completions", host, token, "3s")))
        usage = json.loads(cli(server, "-o", "json", "usage", "--tenant", "bench", "--since", "1h"))
        calls = sum(r.get("models", {}).get("bench-model", {}).get("calls", 0) for r in usage)
        print(f"  ({where}: {calls} model calls metered so far)", file=sys.stderr)
        return rows


def main():
    benchkit.ensure("wrk", "wrk")
    benchkit.ensure("nginx", "nginx")
    work = tempfile.mkdtemp(prefix="bulkhead-bench-ai-")
    model, port = start_model(work)
    prefix = f"bh-bench-{uuid.uuid4().hex[:12]}:"
    try:
        rows = [("model server directly (nginx)", wrk(work, f"http://127.0.0.1:{port}/v1/chat/completions",
                                                       None, None, "3s"))]
        rows += gateway_rows(port, None, work)
        rows += gateway_rows(port, prefix, work)
    finally:
        model.terminate()
        model.wait()
        subprocess.run(f"redis-cli -u {REDIS} --scan --pattern '{prefix}*' | xargs -r redis-cli -u {REDIS} del",
                       shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    ms = lambda us: int(us) / 1000  # noqa: E731
    for n, connections in enumerate(LOADS):
        direct = rows[0][1][n]
        print(f"\nwrk -t2 -c{connections} -d{DURATION}, keep-alive, one small chat call:\n")
        print("| path | requests/s | p50 | p99 | added p50 | added p99 | non-2xx or errors |")
        print("|---|---|---|---|---|---|---|")
        for label, runs in rows:
            r = runs[n]
            added = " | " if r is direct else " | ".join(
                f"{ms(r[k]) - ms(direct[k]):+.3f} ms" for k in ("p50_us", "p99_us"))
            bad = int(r["non2xx"]) + int(r["errors"])
            print(f"| {label} | {float(r['rps']):,.0f} | {ms(r['p50_us']):.3f} ms | "
                  f"{ms(r['p99_us']):.3f} ms | {added} | {bad or 'none'} |")


if __name__ == "__main__":
    main()
