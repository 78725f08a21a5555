"""A real WebSocket peer for the gateway's tests (the `websockets` library).

    ws_echo.py serve             echo server on a free port; prints the port
    ws_echo.py client PORT TOKEN through the gateway at 127.0.0.1:PORT, as
                                 acme.localhost: sends three messages and
                                 prints each echo on its own line
"""

import asyncio
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def echo(connection):
    # What the upstream saw, so the test can check the gateway's headers.
    await connection.send("tenant=" + connection.request.headers.get("x-bulkhead-tenant", ""))
    async for message in connection:
        await connection.send(message)


async def run_server():
    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await server.serve_forever()


async def run_client(port, token):
    uri = "ws://acme.localhost:%d/ws/chat" % port
    headers = {"Authorization": "Bearer " + token}
    async with connect(uri, additional_headers=headers, host="127.0.0.1", port=port) as ws:
        print(await ws.recv(), flush=True)
        for text in ["one", "two", "three"]:
            await ws.send(text)
            print(await ws.recv(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(run_server())
    else:
        asyncio.run(run_client(int(sys.argv[2]), sys.argv[3]))
