"""An MCP server for the gateway's tests, written with the official `mcp`
SDK (FastMCP, streamable HTTP at /mcp).

    python3 mcp_server.py PORT NAME TOOL[,TOOL...] LOG [TOKEN]

Each tool takes `text` and answers `NAME:TOOL:<text>`. Every call is
appended to LOG as one JSON line: the tool, its arguments, whether the
request carried `Authorization: Bearer TOKEN` (when TOKEN is given), and
the tenant, subject and plan the gateway vouched for.
"""

import json
import sys

from mcp.server.fastmcp import Context, FastMCP

port, name, tools, log = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4]
token = sys.argv[5] if len(sys.argv) > 5 else None

server = FastMCP(name, host="127.0.0.1", port=port, log_level="WARNING")


def tool(tool_name):
    async def call(text: str, ctx: Context) -> str:
        headers = ctx.request_context.request.headers
        authorized = token is None or headers.get("authorization") == f"Bearer {token}"
        with open(log, "a") as out:
            vouched = {key: headers.get(f"x-bulkhead-{key}") for key in ("tenant", "subject", "plan")}
            out.write(json.dumps({"tool": tool_name, "text": text, "authorized": authorized, **vouched}) + "\n")
        if not authorized:
            raise ValueError("not authorized")
        return f"{name}:{tool_name}:{text}"

    return call


for tool_name in tools:
    server.add_tool(tool(tool_name), name=tool_name, description=f"{tool_name} of {name}")

server.run(transport="streamable-http")
