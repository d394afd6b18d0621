#!/usr/bin/env python3
"""Docker Engine API version shim: listen on a unix socket, forward to dockerd, and lower the API version in
each request path (`/v1.53/...` -> `/v1.41/...`) to the engine's maximum.

Why: testcontainers 0.28 (through bollard) pins API 1.53 in every request path and never negotiates, while
dockerd refuses any version newer than its own ("client version 1.53 is too new. Maximum supported API
version is 1.41"). Debian bookworm's docker.io is 20.10 (API 1.41). The calls testcontainers makes (create,
start, inspect, logs, copy, stop, remove) have the same shape in both versions; fields the old engine does not
know are ignored by its JSON decoder.

It only rewrites the request line of each HTTP/1.1 request on a connection (bodies are forwarded by
Content-Length or chunked framing; an Upgrade/hijacked connection becomes a raw pipe after its headers).
Responses pass through untouched. Started and stopped by ci/dockerd.sh; stdlib only.

usage: docker-api-compat.py LISTEN_SOCKET UPSTREAM_SOCKET MAX_MINOR
"""

import asyncio
import os
import re
import sys

VERSION_RE = re.compile(rb"^([A-Z]+ )/v1\.(\d+)(/\S*)")


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def requests(reader, writer, max_minor: int) -> None:
    """Forward client->engine, rewriting the version of every request line."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    writer.write(e.partial)
                break
            first, _, rest = head.partition(b"\r\n")
            m = VERSION_RE.match(first)
            if m and int(m.group(2)) > max_minor:
                first = m.group(1) + b"/v1.%d" % max_minor + m.group(3) + first[m.end():]
            writer.write(first + b"\r\n" + rest)
            headers = {}
            for line in rest.split(b"\r\n"):
                name, sep, value = line.partition(b":")
                if sep:
                    headers[name.strip().lower()] = value.strip().lower()
            if b"upgrade" in headers.get(b"connection", b""):
                await writer.drain()
                await pipe(reader, writer)
                return
            if headers.get(b"transfer-encoding") == b"chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    writer.write(size_line)
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        # trailers, then the empty line
                        while True:
                            line = await reader.readuntil(b"\r\n")
                            writer.write(line)
                            if line == b"\r\n":
                                break
                        break
                    writer.write(await reader.readexactly(size + 2))
                    await writer.drain()
            else:
                remaining = int(headers.get(b"content-length", b"0") or b"0")
                while remaining > 0:
                    chunk = await reader.read(min(remaining, 65536))
                    if not chunk:
                        return
                    writer.write(chunk)
                    remaining -= len(chunk)
                    await writer.drain()
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def main() -> None:
    listen, upstream, max_minor = sys.argv[1], sys.argv[2], int(sys.argv[3])

    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_unix_connection(upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(requests(client_r, up_w, max_minor), pipe(up_r, client_w))
        up_w.close()
        client_w.close()

    if os.path.exists(listen):
        os.unlink(listen)
    server = await asyncio.start_unix_server(handle, path=listen, limit=1 << 20)
    print(f"docker-api-compat: {listen} -> {upstream} (API <= 1.{max_minor})", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
