"""Seal a run folder after the fact: a run killed with SIGKILL, or a note added to a sealed run.

Every command here treats the folder as hostile until checked. Before anything is read or
changed, the whole folder is walked without following links: a symbolic link, a FIFO, a
socket or a device anywhere in it, or a name that is not UTF-8, refuses the command (exit 2,
nothing changed). Files are then opened with O_NOFOLLOW and O_NONBLOCK and checked to be
regular files again, JSON is parsed with bounds (size, nesting, integer digits), and nothing
is written outside the folder.

A sealed bundle is never sealed over blindly: `prov seal --force` and `prov note` first
check every file against the existing seal and refuse, naming them, when files changed. A
legitimate re-seal appends a record to reseals.jsonl (root digest before, what changed, why),
which the audit checks (`verify_reseals`).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from provenance import formats, untrusted
from provenance.bundle import (
    BundleError,
    append_note,
    append_reseal,
    folder_lock,
    seal_folder_locked,
    write_checkpoint_index,
    write_run_info,
)
from provenance.capture.process import process_state
from provenance.hashing import hash_files, root_digest, sha256_bytes
from provenance.reader import BundleFileError as ReaderFileError
from provenance.reader import HeaderError, read_safetensors_header

MAX_ENTRIES = 1_000_000  # files and folders in a run folder
MAX_TREE_DEPTH = 32
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def printable(text: str) -> str:
    """A name as it may be printed: control characters and undecodable bytes escaped."""
    out = []
    for c in text:
        if c.isprintable() and not ("\udc80" <= c <= "\udcff"):
            out.append(c)
        elif "\udc80" <= c <= "\udcff":
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        else:
            out.append(c.encode("unicode_escape").decode("ascii"))
    return "".join(out)


# --- a hostile-safe view of the folder -----------------------------------------------------


def scan_folder(root: Path) -> dict[str, os.stat_result]:
    """{relative posix path: lstat} of every regular file under root, links never followed.

    BundleError (naming the entry) for a symlink, FIFO, socket or device, a name that is not
    UTF-8 or holds control characters, or a folder nested or filled beyond the limits.
    """
    try:
        st = os.lstat(root)
    except OSError as exc:
        raise BundleError(f"{printable(str(root))}: not a run folder ({exc.strerror or exc})") from None
    if stat.S_ISLNK(st.st_mode):
        root = root.resolve()  # the folder named on the command line may be a link; nothing inside it may
        st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise BundleError(f"{printable(str(root))}: not a run folder (not a folder)")
    out: dict[str, os.stat_result] = {}
    count = 0

    def walk(folder: Path, prefix: str, depth: int) -> None:
        nonlocal count
        if depth > MAX_TREE_DEPTH:
            raise BundleError(f"{printable(prefix)}: folders nested more than {MAX_TREE_DEPTH} deep; refused")
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise BundleError(f"{printable(prefix or str(root))}: cannot list ({exc.strerror or exc})") from None
        for e in entries:
            count += 1
            if count > MAX_ENTRIES:
                raise BundleError(f"{printable(str(root))}: more than {MAX_ENTRIES} entries; refused")
            rel = f"{prefix}/{e.name}" if prefix else e.name
            try:
                e.name.encode("utf-8")
            except UnicodeEncodeError:
                raise BundleError(f"{printable(rel)}: a file name that is not UTF-8; refused, "
                                  "nothing changed") from None
            if any(not c.isprintable() for c in e.name):
                raise BundleError(f"{printable(rel)}: a file name with control characters; refused, nothing changed")
            est = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(est.st_mode):
                raise BundleError(f"{printable(rel)}: a symbolic link; a run folder holds none and `prov` never "
                                  "follows one (refused, nothing changed)")
            if stat.S_ISDIR(est.st_mode):
                walk(folder / e.name, rel, depth + 1)
            elif stat.S_ISREG(est.st_mode):
                out[rel] = est
            else:
                raise BundleError(f"{printable(rel)}: not a regular file (a FIFO, socket or device); refused, "
                                  "nothing changed")

    walk(root, "", 0)
    return out


def _open(path: Path, flags: int) -> int:
    """Open a file that must be a regular file: links not followed, FIFOs never waited on."""
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, 0o644)
    except OSError as exc:
        raise BundleError(f"{printable(str(path))}: cannot open ({exc.strerror or exc}); refused") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleError(f"{printable(str(path))}: not a regular file; refused")
    return fd


def read_file(root: Path, rel: str, limit: int) -> bytes:
    fd = _open(root / rel, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise BundleError(f"{printable(rel)}: {size} bytes is larger than the {limit}-byte limit; refused")
        chunks = []
        left = limit + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
        if len(data) > limit:
            raise BundleError(f"{printable(rel)}: larger than the {limit}-byte limit; refused")
        return data
    finally:
        os.close(fd)


def _truncate(root: Path, rel: str, size: int) -> None:
    fd = _open(root / rel, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def loads(data: bytes, where: str) -> Any:
    """Bounded JSON (provenance.untrusted: UTF-8, depth, digits, size); BundleError naming `where`."""
    try:
        return untrusted.loads(data)
    except untrusted.UntrustedJSONError as exc:
        raise BundleError(f"{printable(where)}: {printable(str(exc))[:200]}; refused") from None


def read_json(root: Path, rel: str) -> Any:
    return loads(read_file(root, rel, formats.MAX_JSON_BYTES), rel)


def read_jsonl(root: Path, rel: str, files: dict[str, os.stat_result]) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file; a torn last line is skipped, other bad lines refused."""
    if rel not in files:
        return
    lines = read_file(root, rel, 16 * formats.MAX_JSON_BYTES).split(b"\n")
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = loads(raw, f"{rel} line {i}")
        except BundleError:
            if i == len(lines):  # unterminated last line: a crash mid-write
                return
            raise
        if not isinstance(rec, dict):
            raise BundleError(f"{rel}: line {i} is not a JSON object; refused")
        yield rec


def last_step(root: Path, files: dict[str, os.stat_result]) -> int | None:
    step = None
    for rec in read_jsonl(root, formats.METRICS, files):
        s = rec.get("step")
        if isinstance(s, int) and not isinstance(s, bool):
            step = s
    return step


# --- is the run's process still there? ------------------------------------------------------


def _refuse_if_live(root: Path, info: dict[str, Any], what: str) -> None:
    pid = info.get("pid")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool):
        return  # another machine's process: nothing here can tell; the user asked to seal
    ident = info.get("process") if isinstance(info.get("process"), dict) else None
    if ident is not None and ident.get("pid") != pid:
        ident = None
    state = process_state(pid, ident)
    if state == "alive":
        raise BundleError(f"{printable(str(root))}: the run is still going (pid {pid}); not sealing a live run "
                          f"({what}; --force seals anyway)")


# --- repairs after a kill -------------------------------------------------------------------


def _trim_jsonl(root: Path, rel: str, files: dict[str, os.stat_result]) -> bool:
    """Drop a torn (unterminated) last line; return whether the file changed."""
    if rel not in files:
        return False
    data = read_file(root, rel, 16 * formats.MAX_JSON_BYTES)
    if not data or data.endswith(b"\n"):
        return False
    _truncate(root, rel, data.rfind(b"\n") + 1)
    return True


def _trim_order(root: Path, files: dict[str, os.stat_result]) -> list[str]:
    """Make each rank's order files agree: whole step records, and exactly their ids."""
    repaired = []
    prefix = formats.ORDER_DIR + "/"
    for steps_rel in sorted(f for f in files if f.startswith(prefix) and f.endswith(".steps.bin")
                            and f.count("/") == 1 and f[len(prefix):].startswith("rank")):
        stem = steps_rel[: -len(".steps.bin")]
        ids_rel = next((f"{stem}.{x}" for x in ("ids.u64", "ids.u32") if f"{stem}.{x}" in files), f"{stem}.ids.u64")
        width = formats.order_id_width(formats.order_ids_version(ids_rel))
        raw = read_file(root, steps_rel, 1 << 30)
        usable = len(raw) - len(raw) % formats.ORDER_STEP_RECORD.size
        n_ids = sum(n for _s, n, _c in formats.ORDER_STEP_RECORD.iter_unpack(raw[:usable]))
        if usable != len(raw):
            _truncate(root, steps_rel, usable)
            repaired.append(steps_rel)
        if ids_rel in files and files[ids_rel].st_size != width * n_ids:
            if files[ids_rel].st_size < width * n_ids:
                raise BundleError(f"{ids_rel}: holds fewer sample ids than its step records claim; refused")
            _truncate(root, ids_rel, width * n_ids)
            repaired.append(ids_rel)
    return repaired


def _checkpoint_tokens(root: Path, rel: str, size: int) -> int:
    """tokens_seen from a checkpoint's safetensors header, read with bounds (never loaded)."""
    fd = _open(root / rel, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        try:
            header = read_safetensors_header(f, size)
            if "fullyopen" not in header.metadata:
                raise ValueError("not a fullyopen checkpoint (no 'fullyopen' metadata)")
            meta = header.fullyopen_metadata()
        except (HeaderError, ReaderFileError, ValueError) as exc:
            raise BundleError(f"{printable(rel)}: {printable(str(exc))[:200]} (its safetensors header); "
                              "refused, nothing changed") from None
    tokens = meta.get("tokens_seen", 0) if isinstance(meta, dict) else None
    if isinstance(tokens, str) and tokens.isascii() and tokens.isdigit() and len(tokens) <= 20:
        tokens = int(tokens)  # the checkpoint's metadata holds strings
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise BundleError(f"{rel}: checkpoint metadata has no valid tokens_seen; refused")
    return tokens


def _reconcile_checkpoints(root: Path, files: dict[str, os.stat_result]) -> list[str]:
    """Add checkpoints whose hashing had not finished when the run died to the index."""
    index_rel = formats.CHECKPOINT_INDEX
    entries: list[dict[str, Any]] = []
    if index_rel in files:
        obj = read_json(root, index_rel)
        entries = obj.get("checkpoints") if isinstance(obj, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise BundleError(f"{index_rel}: 'checkpoints' is not a list of entries; refused")
    known = {e.get("path") for e in entries}
    prefix = formats.CHECKPOINT_DIR + "/"
    todo = []
    for rel in sorted(files):
        name = rel[len(prefix):]
        if not rel.startswith(prefix) or "/" in name or not name.startswith("step-") \
                or not name.endswith(".safetensors") or rel in known:
            continue
        digits = name[len("step-"):-len(".safetensors")]
        if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
            raise BundleError(f"{printable(rel)}: a checkpoint name without a step number "
                              "(expected step-<digits>.safetensors); refused, nothing changed")
        todo.append((int(digits), rel, _checkpoint_tokens(root, rel, files[rel].st_size)))
    if not todo:
        return []
    digests = hash_files([root / rel for _, rel, _ in todo])
    for step, rel, tokens in todo:
        entries.append({"step": step, "path": rel, "sha256": digests[root / rel], "size": files[rel].st_size,
                        "tokens_seen": tokens, "time": formats.utc_now(), "indexed_by": "prov seal"})
    write_checkpoint_index(root, entries)
    return [rel for _, rel, _ in todo]


def _clean_temp_files(root: Path, files: dict[str, os.stat_result]) -> list[str]:
    """Remove leftovers of interrupted atomic writes (the scan has refused any link among them)."""
    removed = []
    dirs = set()
    for rel in sorted(files):
        parts = rel.split("/")
        tmp_at = next((i for i, p in enumerate(parts) if formats.is_temp_name(p)), None)
        if tmp_at is None:
            continue
        if tmp_at == len(parts) - 1:
            os.unlink(root / rel)  # unlink never follows a link
            removed.append(rel)
        else:
            dirs.add("/".join(parts[: tmp_at + 1]))
    for d in sorted(dirs, key=len):
        p = root / d
        if any(d.startswith(o + "/") for o in removed):
            continue
        if stat.S_ISDIR(os.lstat(p).st_mode):  # a real folder (never a link): the scan walked it
            shutil.rmtree(p)
            removed.append(d)
    # empty temp folders hold no files, so the scan did not list them
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        for d in [d for d in dirnames if formats.is_temp_name(d)]:
            p = Path(dirpath) / d
            if not os.path.islink(p):
                shutil.rmtree(p)
                removed.append(p.relative_to(root).as_posix())
            dirnames.remove(d)
    return removed


# --- the existing seal ------------------------------------------------------------------------


def _sealable(files: dict[str, os.stat_result]) -> list[str]:
    return sorted((f for f in files if f not in formats.UNSEALED
                   and not any(formats.is_temp_name(p) for p in f.split("/"))), key=formats.resource_sort_key)


def _names(label: str, names: list[str]) -> str:
    shown = ", ".join(printable(n) for n in names[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{label}: {shown}{more}"


def verify_existing_seal(root: Path, files: dict[str, os.stat_result]) -> tuple[str, dict[str, str]]:
    """(root hex, {name: hex}) of manifest.json after checking every file against it.

    BundleError naming the files when anything changed since the seal: a bundle that was
    tampered with is never sealed over.
    """
    try:
        root_hex, resources = formats.parse_oms_statement(read_json(root, formats.MANIFEST))
    except formats.FormatError as exc:
        raise BundleError(f"{exc}; cannot check the existing seal, refusing to seal over it") from None
    if root_digest(resources[n] for n in sorted(resources, key=formats.resource_sort_key)) != root_hex:
        raise BundleError(f"{formats.MANIFEST}: its root digest does not match the digests it lists; "
                          "refusing to seal over it")
    names = _sealable(files)
    hashed = hash_files([root / n for n in names]) if names else {}
    now = {n: hashed[root / n] for n in names}
    modified = [n for n in names if n in resources and resources[n] != now[n]]
    added = [n for n in names if n not in resources]
    removed = sorted(n for n in resources if n not in now)
    if modified or added or removed:
        parts = [_names(k, v) for k, v in (("modified", modified), ("added", added), ("removed", removed)) if v]
        raise BundleError(f"{printable(str(root))}: the bundle changed since it was sealed ({'; '.join(parts)}); "
                          "refusing to seal over it (restore the files, or investigate who changed them)")
    return root_hex, resources


def _reseal(root: Path, previous: tuple[str, dict[str, str]], reason: str, command: str,
            known: dict[str, tuple[int, int, str]] | None = None) -> str:
    """Seal again after a legitimate change, recording it in reseals.jsonl; caller holds the lock.
    Files whose (size, mtime_ns) match an entry of `known` are not read again."""
    prev_root, prev = previous
    files = scan_folder(root)
    names = [n for n in _sealable(files) if n != formats.RESEALS]
    known = known or {}
    now: dict[str, str] = {}
    for n in names:
        k = known.get(n)
        if k is not None and k[0] == files[n].st_size and k[1] == files[n].st_mtime_ns:
            now[n] = k[2]
    todo = [n for n in names if n not in now]
    hashed = hash_files([root / n for n in todo]) if todo else {}
    now.update({n: hashed[root / n] for n in todo})
    old = {n: d for n, d in prev.items() if n != formats.RESEALS}
    changes = []
    for n in sorted(set(now) | set(old), key=formats.resource_sort_key):
        before, after = old.get(n), now.get(n)
        if before == after:
            continue
        changes.append({"path": n, "change": "added" if before is None else ("removed" if after is None
                                                                              else "modified"),
                        "sha256_before": formats.digest_str(before) if before else None,
                        "sha256_after": formats.digest_str(after) if after else None})
    rec = formats.reseal_record(prev_root, changes, reason, command)
    append_reseal(root, rec)
    known = {n: (files[n].st_size, files[n].st_mtime_ns, now[n]) for n in names}
    return seal_folder_locked(root, known)


def verify_reseals(resources: dict[str, str], root_hex: str, reseals: bytes) -> tuple[list[dict[str, Any]],
                                                                                     list[str]]:
    """Check reseals.jsonl against the seal: ([{"previous", "new", "reason", ...}], problems).

    Walking back from the current seal, each record's changes are undone and the earlier
    lines of reseals.jsonl restored; the root digest so recomputed must be the one the
    record names as the seal it replaced.
    """
    problems: list[str] = []
    lines = reseals.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        return [], [f"{formats.RESEALS}: the last line is not terminated"]
    recs: list[dict[str, Any]] = []
    for i, raw in enumerate(lines, 1):
        try:
            rec = loads(raw, f"{formats.RESEALS} line {i}")
        except BundleError as exc:
            return [], [str(exc)]
        if not isinstance(rec, dict) or rec.get("schema") != formats.RESEAL_SCHEMA \
                or not isinstance(rec.get("changes"), list) or not isinstance(rec.get("previous_root_digest"), str):
            return [], [f"{formats.RESEALS}: line {i} is not a {formats.RESEAL_SCHEMA} record"]
        recs.append(rec)
    current = dict(resources)
    new_root = root_hex
    out: list[dict[str, Any]] = []
    for k in range(len(recs), 0, -1):
        rec = recs[k - 1]
        before = dict(current)
        if k > 1:
            before[formats.RESEALS] = sha256_bytes(b"".join(x + b"\n" for x in lines[: k - 1]))
        else:
            before.pop(formats.RESEALS, None)
        for ch in rec["changes"]:
            path = ch.get("path") if isinstance(ch, dict) else None
            kind = ch.get("change") if isinstance(ch, dict) else None
            if not isinstance(path, str) or kind not in ("added", "modified", "removed"):
                problems.append(f"{formats.RESEALS}: line {k}: a malformed change {printable(repr(ch))[:120]}")
                continue
            after = ch.get("sha256_after")
            if kind == "removed":
                if path in current:
                    problems.append(f"{formats.RESEALS}: line {k}: {printable(path)} is said removed but is sealed")
            elif not isinstance(after, str) or current.get(path) != after.removeprefix("sha256:"):
                problems.append(f"{formats.RESEALS}: line {k}: {printable(path)} does not have the digest this "
                                "re-seal gave it")
            if kind == "added":
                before.pop(path, None)
            else:
                b = ch.get("sha256_before")
                if not isinstance(b, str):
                    problems.append(f"{formats.RESEALS}: line {k}: {printable(path)} has no digest before")
                    continue
                before[path] = b.removeprefix("sha256:")
        prev_hex = root_digest(before[n] for n in sorted(before, key=formats.resource_sort_key))
        claimed = rec["previous_root_digest"].removeprefix("sha256:")
        if prev_hex != claimed:
            problems.append(f"{formats.RESEALS}: line {k}: undoing its changes gives root digest sha256:{prev_hex}, "
                            f"not the sha256:{printable(claimed)[:64]} it names")
        out.append({"line": k, "time": rec.get("time"), "command": rec.get("command"), "reason": rec.get("reason"),
                    "previous_root_digest": f"sha256:{claimed}", "new_root_digest": f"sha256:{new_root}",
                    "changed": [c.get("path") for c in rec["changes"] if isinstance(c, dict)]})
        current, new_root = before, prev_hex
    out.reverse()
    return out, problems


# --- the commands ---------------------------------------------------------------------------------


def _run_info(root: Path, files: dict[str, os.stat_result]) -> dict[str, Any]:
    if formats.RUN_JSON not in files:
        raise BundleError(f"{printable(str(root))}: not a run folder ({formats.RUN_JSON} is missing)")
    info = read_json(root, formats.RUN_JSON)
    if not isinstance(info, dict):
        raise BundleError(f"{formats.RUN_JSON}: not a JSON object; refused")
    if info.get("status") not in formats.STATUSES:
        raise BundleError(f"{formats.RUN_JSON}: status {printable(repr(info.get('status')))[:60]} is not one of "
                          f"{', '.join(formats.STATUSES)}; refused")
    return info


def seal_run(root: str | os.PathLike[str], force: bool = False, reason: str | None = None) -> dict[str, Any]:
    """Seal a run folder. A run left `running` by a dead (or zombie) process is marked `interrupted`.

    Returns {"root_digest", "status", "repaired", "indexed", "resealed", "unchanged"}.
    Refuses a run whose process is still alive on this host, a bundle that is already
    sealed (unless force), and, even with force, a sealed bundle whose files changed.
    """
    root = Path(root)
    files = scan_folder(root)
    with folder_lock(root):
        files = scan_folder(root)
        info = _run_info(root, files)
        status = info["status"]
        previous = None
        if formats.MANIFEST in files:
            if status != "running" and not force:
                raise BundleError(f"{printable(str(root))}: already sealed (status {status}); nothing to do "
                                  "(`prov seal --force` checks the seal and re-seals)")
            previous = verify_existing_seal(root, files)
            if status != "running":
                return {"root_digest": previous[0], "status": status, "repaired": [], "indexed": [],
                        "resealed": False, "unchanged": True}
        if not force:
            _refuse_if_live(root, info, "its process is neither gone nor a zombie")
        repaired: list[str] = []
        indexed: list[str] = []
        left = dict(info)  # run.json as found: put back if this seal fails (the bundle stays for `prov seal`)
        # every seal by `prov seal` says so in run.json: when, and the status it found; a `sealed_by` already there
        # did not seal (no seal is there, or this is a re-seal of a run left running): kept under `replaces`
        sealed_by: dict[str, Any] = {"command": "prov seal", "time": formats.utc_now(), "status_before": status}
        if info.get("sealed_by") is not None:
            sealed_by["replaces"] = info["sealed_by"]
        if status == "running":
            # everything that can refuse is read before anything is changed
            step = last_step(root, files)
            repaired += _clean_temp_files(root, files)
            files = scan_folder(root)
            for rel in (formats.METRICS, formats.EVALS, formats.EVENTS, formats.NOTES):
                if _trim_jsonl(root, rel, files):
                    repaired.append(rel)
            repaired += _trim_order(root, files)
            indexed = _reconcile_checkpoints(root, files)
            from provenance.capture import wrapped  # a captured command's records: torn tails, its own seeds

            try:
                info.update(wrapped.finalize(root))
            except RecursionError:
                raise BundleError(f"{printable(str(root))}: a captured record nests too deeply; refused") from None
            sealed_by.update(repaired=repaired, indexed_checkpoints=indexed)
            info.update({"status": "interrupted", "ended_at": sealed_by["time"], "exit_status": 137,
                         "error": {"type": "Killed", "message": "the run's process ended without sealing "
                                   "(SIGKILL, power loss or OOM); sealed afterwards by `prov seal`",
                                   "traceback": None},
                         "sealed_by": sealed_by})
            info["last_step"] = step
            write_run_info(root, info)
        else:  # it ended but was not sealed (its sealer was killed, or failed): sealed now, by this command
            info["sealed_by"] = sealed_by
            write_run_info(root, info)
        try:
            if previous is not None:
                digest = _reseal(root, previous, reason or "prov seal --force: a sealed run folder left 'running'",
                                 "prov seal")
            else:
                digest = seal_folder_locked(root)
        except BaseException:
            if status != "running" and not (root / formats.MANIFEST).exists():
                write_run_info(root, left)  # no `sealed_by` claiming a seal that was not made
            raise
        return {"root_digest": digest, "status": info["status"], "repaired": repaired, "indexed": indexed,
                "resealed": previous is not None, "unchanged": False}


def sealed_resources(root: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """(root hex, {name: hex}) that manifest.json states, without checking the files (the caller just did)."""
    try:
        return formats.parse_oms_statement(read_json(Path(root), formats.MANIFEST))
    except formats.FormatError as exc:
        raise BundleError(str(exc)) from None


def record_reseal(root: str | os.PathLike[str], previous: tuple[str, dict[str, str]], reason: str, command: str,
                  known: dict[str, tuple[int, int, str]] | None = None) -> str:
    """Re-seal a bundle whose seal `previous` the caller has just verified (e.g. `prov release` after its
    audit), recording the change in reseals.jsonl like every legitimate re-seal. New root hex."""
    root = Path(root)
    with folder_lock(root):
        return _reseal(root, previous, reason, command, known)


def change_sealed(root: str | os.PathLike[str], change: Any, reason: str, command: str) -> str:
    """Make a legitimate change to a sealed bundle (`change()` writes files) and re-seal it, recorded in
    reseals.jsonl: the existing seal is checked first (a tampered bundle is never sealed over). New root hex."""
    root = Path(root)
    scan_folder(root)
    with folder_lock(root):
        files = scan_folder(root)
        info = _run_info(root, files)
        if info["status"] == "running" or formats.MANIFEST not in files:
            raise BundleError(f"{printable(str(root))}: not a sealed, finished bundle")
        previous = verify_existing_seal(root, files)
        change()
        return _reseal(root, previous, reason, command)


def add_note(root: str | os.PathLike[str], text: str, category: str, author: str | None, links: list[str],
             step: int | None, redact: Any = None, about: str | None = None) -> tuple[int | None, str | None]:
    """Append a decision note; re-seal a sealed bundle after checking its seal. (step, new root hex or None)."""
    root = Path(root)
    scan_folder(root)
    with folder_lock(root):
        files = scan_folder(root)
        info = _run_info(root, files)
        if step is None:
            step = last_step(root, files)
        rec = formats.note_record(text, category, author, links, step, about=about)
        sealed = info["status"] != "running" and formats.MANIFEST in files
        previous = verify_existing_seal(root, files) if sealed else None
        append_note(root, rec, redact)
        if previous is None:
            return step, None
        return step, _reseal(root, previous, f"prov note: a {category} note was added", "prov note")
