"""A persistent cache of file digests, keyed by what the file system says about the file.

Like DVC's state database: an entry is found by (device, inode, size, mtime_ns) and by the
kind of facts asked for (the algorithm and the leaf scheme), so a file is hashed again when
any of them changes. Correctness rules:

* the key is taken from one stat before the file is read and checked against a second stat
  after it was read; a file that changed while it was being hashed is not stored;
* "racy" entries are never trusted: when the file's mtime is less than RACY_NS before the
  moment its entry was made, a same-size edit could have kept the same mtime (coarse file
  system clocks), so such a file is hashed again (and the new entry, made later, then counts);
* every row carries a sha256 over its key and value: a row that does not match is dropped
  with a warning; a cache file SQLite cannot read is moved aside with a warning and a new one
  started. The cache is never needed: any failure means "hash the file".

Location: $PROV_CACHE_DIR/hashes.sqlite, else $XDG_CACHE_HOME/fullyopen/, else ~/.cache/fullyopen/.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provenance import formats

CACHE_FILE = "hashes.sqlite"
SCHEMA = formats.HASH_CACHE_SCHEMA
RACY_NS = 2_000_000_000  # FAT keeps 2 s; NFS and some overlays 1 s; ext4/xfs a clock tick


def cache_dir() -> Path:
    env = os.environ.get("PROV_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fullyopen"


@dataclass(frozen=True)
class StatKey:
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> StatKey:
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _check(key: StatKey, kind: str, made_ns: int, value: str) -> str:
    h = hashlib.sha256(f"{key.dev}\0{key.ino}\0{key.size}\0{key.mtime_ns}\0{kind}\0{made_ns}\0".encode())
    h.update(value.encode())  # the same digest as over the concatenation, without copying a large value
    return h.hexdigest()


class HashCache:
    """get/put of JSON facts per (file identity, kind). Thread-safe for one process (one lock)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, racy_ns: int = RACY_NS) -> None:
        self.path = Path(path) if path is not None else cache_dir() / CACHE_FILE
        self.racy_ns = racy_ns
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Any, ...]] = []
        import threading

        self._lock = threading.Lock()

    # --- connection ---------------------------------------------------------------
    def _open(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect()
        except sqlite3.DatabaseError as exc:
            self._discard(f"{exc}")
            try:
                db = self._connect()
            except (sqlite3.Error, OSError) as exc2:
                _warn(f"hash cache {self.path} cannot be used ({exc2}); hashing everything")
                return None
        except OSError as exc:
            _warn(f"hash cache {self.path} cannot be used ({exc}); hashing everything")
            return None
        self._db = db
        return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS facts (dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,"
                       " kind TEXT, made_ns INTEGER, value TEXT NOT NULL, check_ TEXT NOT NULL,"
                       " PRIMARY KEY (dev, ino, kind))")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA,))
                db.commit()
            elif row[0] != SCHEMA:
                raise sqlite3.DatabaseError(f"schema {row[0]!r}, expected {SCHEMA}")
            db.execute("SELECT count(*) FROM facts").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _discard(self, why: str) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        _warn(f"hash cache {self.path} is corrupt ({why}); discarded, files are hashed again")
        for suffix in ("", "-wal", "-shm", "-journal"):
            p = Path(f"{self.path}{suffix}")
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                _warn(f"cannot remove {p}: {exc}")

    # --- entries ------------------------------------------------------------------
    def get(self, key: StatKey, kind: str) -> dict[str, Any] | None:
        """The facts stored for this exact file identity and kind, or None (a miss)."""
        value = self.get_text(key, kind)
        return None if value is None else self._parse(key, value)

    def get_text(self, key: StatKey, kind: str) -> str | None:
        """The stored value itself, unparsed (checked against its row checksum, never trusted when racy or
        when the size or mtime differ), or None: a whole manifest is taken as text, not re-parsed."""
        with self._lock:
            db = self._open()
            if db is None:
                return None
            try:
                row = db.execute("SELECT size, mtime_ns, made_ns, value, check_ FROM facts WHERE dev = ? AND ino = ?"
                                 " AND kind = ?", (key.dev, key.ino, kind)).fetchone()
            except sqlite3.DatabaseError as exc:
                self._discard(str(exc))
                return None
        if row is None:
            return None
        return self._trusted_text(key, kind, *row)

    def get_many(self, keys: list[tuple[StatKey, str]]) -> list[dict[str, Any] | None]:
        """get() for many files in one query (a temporary table joined with the cache)."""
        with self._lock:
            db = self._open()
            if db is None or not keys:
                return [None] * len(keys)
            try:
                db.execute("CREATE TEMP TABLE IF NOT EXISTS want (i INTEGER, dev INTEGER, ino INTEGER, kind TEXT)")
                db.execute("DELETE FROM want")
                db.executemany("INSERT INTO want VALUES (?, ?, ?, ?)",
                               [(i, k.dev, k.ino, kind) for i, (k, kind) in enumerate(keys)])
                rows = db.execute("SELECT want.i, f.size, f.mtime_ns, f.made_ns, f.value, f.check_ FROM want JOIN "
                                  "facts AS f ON f.dev = want.dev AND f.ino = want.ino AND f.kind = want.kind"
                                  ).fetchall()
                db.execute("DELETE FROM want")
                db.commit()  # end the implicit transaction: no lock is held between calls
            except sqlite3.DatabaseError as exc:
                self._discard(str(exc))
                return [None] * len(keys)
        out: list[dict[str, Any] | None] = [None] * len(keys)
        for i, size, mtime_ns, made_ns, value, check in rows:
            key, kind = keys[i]
            text = self._trusted_text(key, kind, size, mtime_ns, made_ns, value, check)
            out[i] = None if text is None else self._parse(key, text)
        return out

    def _trusted_text(self, key: StatKey, kind: str, size: int, mtime_ns: int, made_ns: int, value: str,
                      check: str) -> str | None:
        if size != key.size or mtime_ns != key.mtime_ns:
            return None  # the file changed since: never trusted across a changed size or mtime
        if made_ns - mtime_ns < self.racy_ns:
            return None  # racy: the file could have changed within the same mtime tick
        if not isinstance(value, str) or check != _check(key, kind, made_ns, value):
            _warn(f"hash cache {self.path}: an entry for inode {key.ino} does not match its checksum; ignored")
            return None
        return value

    def _parse(self, key: StatKey, value: str) -> dict[str, Any] | None:
        try:
            facts = json.loads(value)
        except json.JSONDecodeError:
            _warn(f"hash cache {self.path}: an entry for inode {key.ino} is not JSON; ignored")
            return None
        return facts if isinstance(facts, dict) else None

    def put(self, before: StatKey, after: StatKey, kind: str, facts: dict[str, Any], made_ns: int) -> None:
        """Remember facts computed between two stats of a file; nothing is kept if the file changed."""
        self.put_text(before, after, kind, json.dumps(facts, sort_keys=True, separators=(",", ":")), made_ns)

    def put_text(self, before: StatKey, after: StatKey, kind: str, value: str, made_ns: int) -> None:
        """put() of a value that is already text (get_text gives it back unparsed)."""
        if before != after:
            return
        with self._lock:
            self._pending.append((before.dev, before.ino, before.size, before.mtime_ns, kind, made_ns, value,
                                  _check(before, kind, made_ns, value)))

    def flush(self) -> None:
        """Write the pending entries in one transaction (a failure only loses the cache entries)."""
        with self._lock:
            rows, self._pending = self._pending, []
            if not rows:
                return
            db = self._open()
            if db is None:
                return
            try:
                with db:
                    db.executemany("INSERT OR REPLACE INTO facts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError):
                    _warn(f"hash cache {self.path} not updated ({exc})")
                else:
                    self._discard(str(exc))

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def now_ns() -> int:
    return time.time_ns()


def default_cache() -> HashCache | None:
    """The machine's shared cache, or None when PROV_CACHE_DIR is set to an empty string or 'off'."""
    if os.environ.get("PROV_CACHE_DIR", None) in ("", "off", "none"):
        return None
    return HashCache()
