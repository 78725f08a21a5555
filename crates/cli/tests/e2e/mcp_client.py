"""An MCP client for the gateway's tests, written with the official `mcp`
SDK: connects to URL as HOST (the tenant's name at the gateway, which need
not resolve) with a bearer TOKEN, initializes, and runs each STEP, printing
one JSON line per step.

    python3 mcp_client.py URL HOST TOKEN STEP...

A STEP is `list`, or `call:TOOL:TEXT`. A call prints the result's text and
whether it is an error; a call the server refuses prints the JSON-RPC error.
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError


async def main(url, host, token, steps):
    headers = {"Authorization": f"Bearer {token}", "Host": host}
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            print(json.dumps({"initialized": init.protocolVersion, "server": init.serverInfo.name}))
            for step in steps:
                if step == "list":
                    tools = await session.list_tools()
                    print(json.dumps({"tools": sorted(t.name for t in tools.tools)}))
                    continue
                _, tool, text = step.split(":", 2)
                try:
                    result = await session.call_tool(tool, {"text": text})
                    texts = [c.text for c in result.content if c.type == "text"]
                    print(json.dumps({"tool": tool, "text": texts, "error": result.isError}))
                except McpError as error:
                    print(json.dumps({"tool": tool, "refused": error.error.code, "message": error.error.message}))


asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
