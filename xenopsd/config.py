"""Daemon options: upstream's names, from the command line and from config files.

Options are accepted as `--key value`, `--key=value` and as `key = value`
lines in the file given by `--config` (and its `.conf.d/` fragments), with
the command line winning. Every option is declared once, in `OPTIONS`, with
its type, default and help text; the parser, the sample
`/etc/xenopsd.conf` and the docs are generated from it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from xenopsd import log

logger = log.get(__name__)


class ConfigError(ValueError):
    """An option is unknown or its value is malformed."""


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "yes", "on", "1"):
        return True
    if low in ("false", "no", "off", "0"):
        return False
    raise ConfigError(f"expected true or false, got {text!r}")


@dataclass
class Config:
    backend: str = field(
        default="simulator",
        metadata={"help": "simulator, xc or xenlight", "choices": ("simulator", "xc", "xenlight")},
    )
    instance: str = field(
        default="",
        metadata={"help": "queue name suffix (default: classic for xc, else the backend's name)"},
    )
    sockets_path: str = field(
        default="/var/lib/xcp", metadata={"help": "directory of the xenopsd sockets"}
    )
    database_path: str = field(
        default="/var/run/nonpersistent/xenopsd",
        metadata={"help": "directory of the VM metadata store"},
    )
    persist: bool = field(
        default=True, metadata={"help": "keep metadata on disk (false: in memory)"}
    )
    use_switch: bool = field(
        default=True,
        metadata={"help": "serve through the message switch instead of the XML socket"},
    )
    switch_path: str = field(
        default="/var/run/message-switch/sock", metadata={"help": "the message switch's socket"}
    )
    queue: str = field(
        default="", metadata={"help": "queue name (default org.xen.xapi.xenops.<instance>)"}
    )
    worker_pool_size: int = field(default=4, metadata={"help": "parallel VM operation workers"})
    hooks_dir: str = field(default="/etc/xapi.d", metadata={"help": "directory of hook scripts"})
    migration_ca_bundle: str = field(
        default="/etc/stunnel/xapi-pool-ca-bundle.pem",
        metadata={
            "help": "CA certificates (PEM) that the pool certificate of an https migration"
            " destination must chain to when VM.migrate asks for verify_dest; the default"
            " is xapi's pool bundle"
        },
    )
    hypervisor: str = field(
        default="xen", metadata={"help": "xc backend's hypervisor: xen, or emu:DIR"}
    )
    socket_mode: str = field(
        default="0600", metadata={"help": "permissions of the sockets (octal)"}
    )
    socket_group: str = field(
        default="", metadata={"help": "group owning the sockets (empty: unchanged)"}
    )
    max_request_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "largest request body accepted"}
    )
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    log_json: bool = field(default=False, metadata={"help": "log JSON lines instead of key=value"})

    @property
    def instance_name(self) -> str:
        return self.instance or ("classic" if self.backend == "xc" else self.backend)

    @property
    def queue_name(self) -> str:
        return self.queue or f"org.xen.xapi.xenops.{self.instance_name}"

    @property
    def xml_socket(self) -> str:
        return os.path.join(self.sockets_path, "xenopsd")

    @property
    def json_socket(self) -> str:
        return os.path.join(self.sockets_path, "xenopsd.json")

    @property
    def forwarded_socket(self) -> str:
        return os.path.join(self.sockets_path, "xenopsd.forwarded")


def option_names() -> list[str]:
    return [f.name.replace("_", "-") for f in fields(Config)]


def _convert(name: str, text: str) -> Any:
    for f in fields(Config):
        if f.name == name:
            try:
                if f.type == "bool":
                    return parse_bool(text)
                if f.type == "int":
                    return int(text, 10)
            except ValueError as exc:
                raise ConfigError(f"option {name.replace('_', '-')}: {exc}") from None
            choices = f.metadata.get("choices")
            if choices and text not in choices:
                raise ConfigError(
                    f"option {name.replace('_', '-')}: {text!r} is not one of {', '.join(choices)}"
                )
            return text
    raise ConfigError(f"unknown option {name.replace('_', '-')!r}")


KNOWN = frozenset(f.name for f in fields(Config))


def read_config_file(path: Path) -> dict[str, str]:
    """`key = value` lines, `#` comments; later files override earlier ones.

    Keys we do not know are skipped with a warning rather than refused, as
    upstream does, so an upstream xenopsd.conf (with `simulate`,
    `run_hotplug_scripts`, ...) can be reused as it is.
    """
    values: dict[str, str] = {}
    files = [path]
    fragments = Path(str(path) + ".d")
    if fragments.is_dir():
        files += sorted(fragments.glob("*.conf"))
    for f in files:
        try:
            text = f.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {f}: {exc.strerror}") from None
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "=" not in line:
                raise ConfigError(f"{f}:{n}: expected 'key = value', got {raw.strip()!r}")
            key, value = (s.strip() for s in line.split("=", 1))
            name = key.replace("-", "_")
            if name not in KNOWN:
                logger.warning("config.unknown_key", file=str(f), line=n, key=key)
                continue
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[name] = value
    return values


def parse_args(argv: list[str], program: str, defaults: dict[str, Any] | None = None) -> Config:
    """Command line over config file over the program's defaults over built-in defaults."""
    parser = argparse.ArgumentParser(
        prog=program,
        description="xenopsd: the Xen VM manager of the XAPI toolstack.",
        epilog="Every option can also be set as 'key = value' in the --config file.",
    )
    parser.add_argument("--config", help="config file (key = value lines)")
    for f in fields(Config):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            metavar=type(f.default).__name__.upper(),
            help=f"{f.metadata.get('help', '')} (default: {f.default})",
        )
    ns = parser.parse_args(argv)
    cfg = Config(**(defaults or {}))
    layered: dict[str, str] = {}
    if ns.config:
        layered.update(read_config_file(Path(ns.config)))
    layered.update({k: v for k, v in vars(ns).items() if k != "config" and v is not None})
    for key, text in layered.items():
        setattr(cfg, key, _convert(key, text))
    if cfg.worker_pool_size < 1:
        raise ConfigError("option worker-pool-size: must be at least 1")
    return cfg
