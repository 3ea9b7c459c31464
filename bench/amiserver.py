"""A plain AMI server for the benchmarks: log in, then a stream file as fast as TCP takes it.

Run as its own process (`python bench/amiserver.py STREAM`) so that serving
the bytes does not share the measured process's CPU; it prints the port it
listens on as its first line. Every connection gets the banner, answers to
Login, Ping, CoreShowChannels (no live channels) and Logoff, and after its
first CoreShowChannels the whole stream file followed by one `BenchEnd`
event. The connection then stays open until the client closes it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from synthetic import BANNER, end_marker, format_message

from callhub.ami.parser import MessageSplitter

CHUNK = 256 * 1024


class StreamServer:
    """Serves one stream file to every client that asks for channels."""

    def __init__(self, path: Path, chunk: int = CHUNK) -> None:
        self.path = path
        self.chunk = chunk

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(BANNER)
        splitter = MessageSplitter()
        splitter.banner = ""
        streaming: asyncio.Task[None] | None = None
        username = ""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for action in splitter.feed(data):
                    name = action.get("Action", "").lower()
                    reply = {"Response": "Success"}
                    if "ActionID" in action:
                        reply["ActionID"] = action["ActionID"]
                    if name == "login":
                        username = action.get("Username", "")
                        reply["Message"] = "Authentication accepted"
                        writer.write(format_message(reply) + format_message({
                            "Event": "FullyBooted", "Privilege": "system,all",
                            "Status": "Fully Booted"}))
                    elif name == "ping":
                        reply.update(Ping="Pong", Timestamp=f"{time.time():.6f}")
                        writer.write(format_message(reply))
                    elif name == "coreshowchannels":
                        reply.update(EventList="start", Message="Channels will follow")
                        done = {"Event": "CoreShowChannelsComplete", "EventList": "Complete",
                                "ListItems": "0"}
                        if "ActionID" in action:
                            done["ActionID"] = action["ActionID"]
                        writer.write(format_message(reply) + format_message(done))
                        if streaming is None:
                            streaming = asyncio.create_task(self.stream(writer, username))
                    elif name == "logoff":
                        reply["Response"] = "Goodbye"
                        writer.write(format_message(reply))
                        return
                    else:
                        reply.update(Response="Error", Message="Invalid/unknown command")
                        writer.write(format_message(reply))
        except ConnectionError:
            pass
        finally:
            if streaming is not None:
                streaming.cancel()
            writer.close()

    async def stream(self, writer: asyncio.StreamWriter, username: str) -> None:
        """What a client gets after its first CoreShowChannels (`username`: its login)."""
        try:
            # A page-cached file read is far shorter than a drain: no thread needed.
            with open(self.path, "rb") as fh:  # noqa: ASYNC230
                while data := fh.read(self.chunk):
                    writer.write(data)
                    await writer.drain()
            writer.write(end_marker())
            await writer.drain()
        except ConnectionError:
            pass


async def main(path: Path, host: str, port: int, chunk: int) -> None:
    server = await asyncio.start_server(StreamServer(path, chunk).serve, host, port)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stream", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=CHUNK)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.stream, args.host, args.port, args.chunk))
