"""The metadata store (spec §10): upstream's layout, atomic replacement, odd ids, partial writes."""

from __future__ import annotations

from pathlib import Path

from xenopsd.server.store import FileStore, Namespace, Store


def test_layout_and_listing(tmp_path: Path) -> None:
    s = FileStore(str(tmp_path))
    s.write(("VM", "vm1", "config"), "{}")
    s.write(("VM", "vm1", "vbd.xvda"), '{"a":1}')
    s.write(("PCI", "vm1", "pci.0"), "{}")
    assert (tmp_path / "VM" / "vm1" / "vbd.xvda").read_text() == '{"a":1}'
    assert s.children(("VM",)) == ["vm1"]
    assert s.children(("VM", "vm1")) == ["config", "vbd.xvda"]
    s.delete(("VM", "vm1", "config"))
    s.delete(("VM", "vm1", "vbd.xvda"))
    assert s.children(("VM",)) == []
    assert not (tmp_path / "VM" / "vm1").exists() and (tmp_path / "VM").exists()


def test_reload_after_restart_and_partial_write_dropped(tmp_path: Path) -> None:
    s = FileStore(str(tmp_path))
    s.write(("VM", "a", "config"), "one")
    s.write(("VM", "a", "config"), "two")
    (tmp_path / "VM" / "a" / ".tmp-config.deadbeef").write_text('{"half')
    again = FileStore(str(tmp_path))
    assert again.read(("VM", "a", "config")) == "two"
    assert [p.name for p in (tmp_path / "VM" / "a").iterdir()] == ["config"]


def test_ids_that_are_not_file_names(tmp_path: Path) -> None:
    s = FileStore(str(tmp_path))
    for vm in ["../../etc", "a/b", ".hidden", "..", "100%"]:
        s.write(("VM", vm, "config"), vm)
    assert {p.parent.parent for p in tmp_path.rglob("config")} == {tmp_path / "VM"}
    again = FileStore(str(tmp_path))
    assert sorted(again.children(("VM",))) == sorted(["../../etc", "a/b", ".hidden", "..", "100%"])
    assert again.read(("VM", "a/b", "config")) == "a/b"


def test_memory_store_and_namespace() -> None:
    s = Store()
    ns = Namespace(s, "domain")
    ns.write("x", "1")
    ns.write("y", "2")
    assert ns.names() == ["x", "y"] and ns.read("x") == "1"
    ns.delete("x")
    assert ns.names() == ["y"] and ns.read("x") is None


def test_db_never_serves_a_stale_decoded_record() -> None:
    from dataclasses import replace

    from tests.integration.engine_helpers import make_vm
    from xenopsd.api import jsontext, marshal
    from xenopsd.api.vm import Vm
    from xenopsd.server.db import Db

    store = Store()
    db = Db(store)
    db.write_vm(make_vm("a"))
    assert db.vm("a").name == "vm-a"
    # a writer that raced past the memo: the next read follows the stored text
    store.write(
        ("VM", "a", "config"), jsontext.dumps(marshal.encode(Vm, replace(db.vm("a"), name="b")))
    )
    assert db.vm("a").name == "b"
