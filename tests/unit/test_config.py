"""Options as upstream spells them: --key value, --key=value, and config files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xenopsd.config import ConfigError, parse_args


def test_both_command_line_forms() -> None:
    cfg = parse_args(["--sockets-path", "/a", "--use-switch=false", "--worker-pool-size=16"], "t")
    assert (cfg.sockets_path, cfg.use_switch, cfg.worker_pool_size) == ("/a", False, 16)


def test_config_file_and_fragments_under_the_command_line(tmp_path: Path) -> None:
    conf = tmp_path / "xenopsd.conf"
    conf.write_text(
        "# comment\nuse-switch = false\nqueue='org.xen.xapi.xenops.test'  # trailing\n"
        "simulate = true\n"  # an upstream key we do not have: skipped
    )
    (tmp_path / "xenopsd.conf.d").mkdir()
    (tmp_path / "xenopsd.conf.d" / "10-pool.conf").write_text("worker-pool-size = 8\n")
    cfg = parse_args(["--config", str(conf), "--worker-pool-size", "2"], "t")
    assert cfg.use_switch is False
    assert cfg.queue_name == "org.xen.xapi.xenops.test"
    assert cfg.worker_pool_size == 2


def test_instance_names_and_queues() -> None:
    assert parse_args(["--backend", "xc"], "t").queue_name == "org.xen.xapi.xenops.classic"
    assert parse_args([], "t").queue_name == "org.xen.xapi.xenops.simulator"
    assert parse_args(["--backend", "xenlight"], "t").instance_name == "xenlight"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--use-switch", "maybe"], "expected true or false"),
        (["--worker-pool-size", "many"], "worker_pool_size"),
        (["--worker-pool-size", "0"], "at least 1"),
        (["--backend", "qemu"], "not one of"),
    ],
)
def test_bad_values_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("_", "[-_]")):
        parse_args(argv, "t")


def test_bad_config_file_lines(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("this line has no equals sign\n")
    with pytest.raises(ConfigError, match=r"bad\.conf:1"):
        parse_args(["--config", str(conf)], "t")
    conf.write_text("no-such-option = 1\n")
    assert parse_args(["--config", str(conf)], "t").backend == "simulator"
    with pytest.raises(ConfigError, match="cannot read"):
        parse_args(["--config", str(tmp_path / "missing.conf")], "t")


def test_daemon_exits_with_one_clear_line_on_bad_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xenopsd", "--use-switch", "perhaps"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    expected = "xenopsd: option use-switch: expected true or false, got 'perhaps'"
    assert proc.stderr.strip() == expected
