"""The metadata store: upstream's on-disk layout, written so a crash never leaves half a record.

Records are addressed by paths such as `("VM", "<vm>", "config")`, which map
to files `<root>/VM/<vm>/config` (spec §10.1). Every write goes to a temporary
file in the same directory, is fsync'd, then renamed over the old record, so
after `kill -9` each record is either the old or the new version. The whole
tree is mirrored in memory, because `stat`/`list` are far more frequent than
writes and must not touch the disk; `persist=false` keeps only the mirror.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

from xenopsd import log

logger = log.get(__name__)

StorePath = tuple[str, ...]

_SAFE = re.compile(r"[A-Za-z0-9_:@+=,-][A-Za-z0-9_.:@+=,-]*\Z")
_TEMP_PREFIX = ".tmp-"


def _component(name: str) -> str:
    """Ids are client-chosen: anything that is not a plain file name is %-quoted."""
    return name if _SAFE.match(name) else quote(name, safe="").replace(".", "%2E")


class Store:
    """In-memory tree of records; `FileStore` adds the files underneath."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[StorePath, str] = {}
        self._children: dict[StorePath, dict[str, int]] = {}
        """For each directory, its entries and how many records each holds (so listing is cheap)."""

    def _set(self, path: StorePath, text: str) -> None:
        """Called with the lock held."""
        if path not in self._records:
            for k in range(len(path)):
                entries = self._children.setdefault(path[:k], {})
                entries[path[k]] = entries.get(path[k], 0) + 1
        self._records[path] = text

    def _unset(self, path: StorePath) -> None:
        """Called with the lock held."""
        if self._records.pop(path, None) is None:
            return
        for k in range(len(path)):
            entries = self._children[path[:k]]
            entries[path[k]] -= 1
            if entries[path[k]] == 0:
                del entries[path[k]]

    def read(self, path: StorePath) -> str | None:
        with self._lock:
            return self._records.get(path)

    def write(self, path: StorePath, text: str) -> None:
        with self._lock:
            self._set(path, text)

    def delete(self, path: StorePath) -> None:
        with self._lock:
            self._unset(path)

    def children(self, prefix: StorePath) -> list[str]:
        """Names of the records and directories directly under `prefix`, sorted."""
        with self._lock:
            return sorted(self._children.get(prefix, ()))

    def close(self) -> None:
        pass


class FileStore(Store):
    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._load()

    def _file(self, path: StorePath) -> Path:
        return self.root.joinpath(*(_component(p) for p in path))

    def _load(self) -> None:
        for dirpath, _dirs, files in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root).parts
            for name in files:
                full = os.path.join(dirpath, name)
                if name.startswith(_TEMP_PREFIX):
                    logger.info("store.drop_partial_write", file=full)
                    os.unlink(full)
                    continue
                with open(full, encoding="utf-8") as f:
                    text = f.read()
                self._set(tuple(unquote(p) for p in (*rel, name)), text)

    def write(self, path: StorePath, text: str) -> None:
        target = self._file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f"{_TEMP_PREFIX}{target.name}.{uuid.uuid4().hex}"
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with self._lock:
            os.replace(temp, target)
            self._set(path, text)

    def delete(self, path: StorePath) -> None:
        target = self._file(path)
        with self._lock:
            self._unset(path)
            try:
                target.unlink()
            except FileNotFoundError:
                return
            parent = target.parent
            while parent != self.root and parent.parent != self.root:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent


class Namespace:
    """One top-level directory of the store, as a `KeyValueStore` for a backend."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self._name = name

    def read(self, key: str) -> str | None:
        return self._store.read((self._name, key))

    def write(self, key: str, text: str) -> None:
        self._store.write((self._name, key), text)

    def delete(self, key: str) -> None:
        self._store.delete((self._name, key))

    def names(self) -> list[str]:
        return self._store.children((self._name,))


def open_store(root: str, persist: bool) -> Store:
    return FileStore(root) if persist else Store()
