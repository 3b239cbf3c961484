"""The binary framing (spec §1.8): 16 ASCII decimal digits of length, then a JSON-RPC body."""

from __future__ import annotations

import asyncio

from xenopsd import log
from xenopsd.rpc.aio import within
from xenopsd.rpc.codecs import answer_json
from xenopsd.rpc.dispatch import Dispatcher

logger = log.get(__name__)

HEADER = 16


class FramingError(ValueError):
    pass


def frame(body: bytes) -> bytes:
    return b"%016d" % len(body) + body


def parse_length(header: bytes, limit: int) -> int:
    text = header.strip()
    if len(header) != HEADER or not text.isdigit():
        raise FramingError(f"bad length header {header!r}")
    length = int(text)
    if length > limit:
        raise FramingError(f"frame of {length} bytes exceeds the limit of {limit}")
    return length


class FramingServer:
    def __init__(self, dispatcher: Dispatcher, max_body: int, timeout: float = 300.0) -> None:
        self.dispatcher = dispatcher
        self.max_body = max_body
        self.timeout = timeout

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    header = await within(self.timeout, reader.readexactly(HEADER))
                except asyncio.IncompleteReadError:
                    return
                length = parse_length(header, self.max_body)
                body = await within(self.timeout, reader.readexactly(length))
                writer.write(frame(await answer_json(self.dispatcher, body)))
                await within(self.timeout, writer.drain())
        except FramingError as exc:
            logger.info("framing error; closing", error=str(exc))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            logger.exception("framed connection failed")
        finally:
            writer.close()
