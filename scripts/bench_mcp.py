"""What the gateway adds to an MCP `tools/call` (issue 14): the same tool of
the same MCP server (the official `mcp` SDK's FastMCP, streamable HTTP),
called N times in a row by the official SDK's client, once directly and
once through a tenant's MCP endpoint on a real `bulkhead serve` (release
build, embedded store, one guardrail on), alternating rounds; p50 and p99
of each, and the difference.

    python3 scripts/bench_mcp.py [N]        # default 500 calls per round

Needs target/release/bulkhead (`cargo build --release`) and the `mcp`
package (scripts/test.sh installs it).
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit  # noqa: E402

from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamablehttp_client  # noqa: E402

SERVER = os.path.join(benchkit.ROOT, "crates", "cli", "tests", "e2e", "mcp_server.py")


async def calls(url, headers, tool, n):
    """Latencies (ms) of n calls of `tool` in one session."""
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            for _ in range(20):  # warm the connection and the gateway's session
                await session.call_tool(tool, {"text": "warm"})
            latencies = []
            for i in range(n):
                started = time.perf_counter()
                result = await session.call_tool(tool, {"text": f"call {i}"})
                latencies.append((time.perf_counter() - started) * 1000)
                if result.isError:
                    raise RuntimeError(result.content)
            return latencies


def cli(server, *args, stdin=None):
    env = {**os.environ, "BULKHEAD_DATA_DIR": server.data_dir}
    subprocess.run([benchkit.BIN, *args], check=True, env=env, input=stdin,
                   stdout=subprocess.DEVNULL)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    work = tempfile.mkdtemp(prefix="bulkhead-bench-mcp-")
    port = benchkit.free_port()
    upstream = subprocess.Popen(
        [sys.executable, SERVER, str(port), "kb", "search", os.path.join(work, "calls")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bench_server = benchkit.BenchServer("sqlite")
        bench_server.command += ["--gateway-listen", "127.0.0.1:0"]
        with bench_server as server:
            server.create([("agents", "professional")])
            cli(server, "apis", "create", "--tenant", "agents", "mcp", "--prefix", "/mcp", "--type", "mcp")
            cli(server, "tools", "add", "--tenant", "agents", "kb", "--mcp", f"http://127.0.0.1:{port}/mcp")
            guardrail = {"name": "pii", "pii": {"card": "redact", "email": "redact"}}
            status, body = server.api.call("PUT", "/v1/tenants/agents/guardrails/pii", guardrail)
            assert status in (200, 201), body
            token = subprocess.run(
                [benchkit.BIN, "auth", "token", "--tenant", "agents", "--subject", "bench", "--role", "analyst"],
                check=True, capture_output=True, text=True,
                env={**os.environ, "BULKHEAD_DATA_DIR": server.data_dir}).stdout.strip()
            gateway = server.api.call("GET", "/v1/status")[1]["gateway_url"].removeprefix("http://")
            benchkit.wait_port(port)
            time.sleep(0.5)
            direct = f"http://127.0.0.1:{port}/mcp"
            through = f"http://{gateway}/mcp"
            host = f"agents.localhost:{gateway.rsplit(':', 1)[1]}"
            results = {"direct": [], "gateway": []}
            for _ in range(3):
                results["direct"] += asyncio.run(calls(direct, {}, "search", n))
                results["gateway"] += asyncio.run(
                    calls(through, {"Authorization": f"Bearer {token}", "Host": host}, "search", n))
            print(f"tools/call, {3 * n} calls each way, 3 alternating rounds, one client in a row:")
            for label, values in results.items():
                print(f"  {label:8} p50 {benchkit.percentile(values, 50):6.2f} ms   "
                      f"p99 {benchkit.percentile(values, 99):6.2f} ms")
            added = {p: benchkit.percentile(results["gateway"], p) - benchkit.percentile(results["direct"], p)
                     for p in (50, 99)}
            print(f"  added    p50 {added[50]:6.2f} ms   p99 {added[99]:6.2f} ms")
            print(json.dumps({"direct": len(results["direct"]), "gateway": len(results["gateway"])}))
    finally:
        upstream.terminate()
        upstream.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
