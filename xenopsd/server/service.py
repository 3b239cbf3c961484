"""The object the dispatcher serves: one method per wire method, named by `Method.py_name`.

A method may be a plain function (the transports run it on a worker
thread, so it may block) or a coroutine function (run on the event loop;
for long waits such as `UPDATES.get` that must scale to many clients).
A wire method without an implementation here answers `Unimplemented`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from xenopsd.api.host import Query
from xenopsd.config import Config


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.instance_id = str(uuid.uuid4())
        self.request_shutdown: Callable[[], None] = lambda: None

    def close(self) -> None:
        """Stop background work; domains keep running."""

    def query(self, debug_info: str, unit: None) -> Query:
        return Query(
            name="xenops", vendor="XCP", version="0.1", features=[], instance_id=self.instance_id
        )

    def debug_shutdown(self, debug_info: str, unit: None) -> None:
        self.request_shutdown()


def build_service(config: Config) -> Service:
    return Service(config)
