"""From a decoded request (method name, params) to an encoded reply, driven by `METHODS`.

Argument decoding happens here, synchronously; the service method then runs
on a worker thread (plain functions, which may block) or on the event loop
(coroutine functions, for long waits). Every failure leaves as an encoded
error variant: the service's own exceptions as they are, anything else as
`Internal_error` with a readable text.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from concurrent.futures import Executor
from typing import Any, NamedTuple

import structlog

from xenopsd import log
from xenopsd.api import marshal
from xenopsd.api.errors import InternalError, Unimplemented, WireError, XenopsError
from xenopsd.api.methods import METHODS, Method

logger = log.get(__name__)

# Upstream rewrites these two legacy positional calls into the named form.
_LEGACY_POSITIONAL = {"query": "unit", "VM.import_metadata": "metadata"}


class Reply(NamedTuple):
    ok: bool
    value: Any


def marshal_error(text: str) -> InternalError:
    return InternalError(f'Idl.MarshalError("{text}")')


def encode_error(exc: BaseException) -> Any:
    if isinstance(exc, WireError):
        try:
            return marshal.encode(type(exc).variant_base(), exc)
        except marshal.MarshalError:
            logger.exception("unencodable error", error=repr(exc))
    text = f"{type(exc).__name__}({str(exc)!r})" if str(exc) else type(exc).__name__
    return marshal.encode(XenopsError, InternalError(text))


def log_key(debug_info: str) -> str:
    """The log part of a debug_info string: everything before the first newline."""
    return debug_info.split("\n", 1)[0]


def decode_args(method: Method, params: list[Any]) -> dict[str, Any]:
    legacy = _LEGACY_POSITIONAL.get(method.wire)
    if legacy and params and isinstance(params[0], str):
        params = [
            {method.params[0].name: params[0], legacy: params[1] if len(params) > 1 else None}
        ]
    if not params or not isinstance(params[0], dict):
        raise marshal_error("Expecting a struct of named arguments as the first parameter")
    given: dict[str, Any] = params[0]
    kwargs: dict[str, Any] = {}
    for p in method.params:
        if p.name in given:
            raw = given[p.name]
        elif p.type is None:
            raw = None  # a unit argument carries nothing; accept it missing
        elif p.optional:
            kwargs[p.name] = None
            continue
        else:
            raise marshal_error(f"Expecting named argument '{p.name}'")
        tp = marshal.option_inner(p.type) if p.optional else p.type
        try:
            kwargs[p.name] = marshal.decode(tp, raw)
        except marshal.MarshalError as exc:
            raise marshal_error(f"argument '{p.name}': {exc}") from None
    return kwargs


class Dispatcher:
    def __init__(self, service: Any, executor: Executor) -> None:
        self.service = service
        self.executor = executor

    async def dispatch(self, name: str, params: list[Any]) -> Reply:
        method = METHODS.get(name)
        if method is None:
            logger.warning("unknown method", method=name)
            return Reply(False, encode_error(InternalError(f'Idl.UnknownMethod("{name}")')))
        try:
            kwargs = decode_args(method, params)
        except XenopsError as exc:
            logger.info("bad arguments", method=name, error=str(exc))
            return Reply(False, encode_error(exc))
        dbg = log_key(kwargs.get(method.params[0].name) or "")
        impl = getattr(self.service, method.py_name, None)
        with structlog.contextvars.bound_contextvars(dbg=dbg, method=name):
            try:
                if impl is None:
                    raise Unimplemented(name)
                if inspect.iscoroutinefunction(impl):
                    result = await impl(**kwargs)
                elif getattr(impl, "xenopsd_inline", False):
                    result = impl(**kwargs)
                else:
                    ctx = contextvars.copy_context()
                    call = functools.partial(ctx.run, impl, **kwargs)
                    result = await asyncio.get_running_loop().run_in_executor(self.executor, call)
                return Reply(True, marshal.encode(method.result, result))
            except WireError as exc:
                logger.info("call failed", error=str(exc))
                return Reply(False, encode_error(exc))
            except marshal.MarshalError as exc:
                logger.error("result does not match its declared type", error=str(exc))
                return Reply(False, encode_error(InternalError(f"bad result: {exc}")))
            except Exception as exc:
                logger.exception("call raised")
                return Reply(False, encode_error(exc))
