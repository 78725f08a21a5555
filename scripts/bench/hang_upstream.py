#!/usr/bin/env python3
"""An upstream that hangs: it accepts every connection, reads what comes,
and never answers. Used by scripts/bench_gateway.sh to give one tenant a
hung upstream. Usage: hang_upstream.py PORT (binds 127.0.0.1)."""

import asyncio
import sys


async def hang(reader, writer):
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(hang, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
