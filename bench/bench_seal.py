"""Sealing does not re-read what was hashed while the run went (issue 3).

    .venv/bin/python bench/bench_seal.py [--steps 60] [--json out.json]

Trains the default model (configs/tiny-lm.yaml model sizes; a smaller corpus and few steps,
checkpoints every --checkpoint-every steps) through training/train.py, in this process, and
watches the seal at the end of the run (BundleWriter.seal):
  - the bytes it hashes (seal_folder's progress callback) and the bytes this process reads
    while it seals (rchar of /proc/self/io: every read() and pread(), whoever calls it);
  - the files it hashes, split into files hashed during the run whose digest went stale (a
    re-read: must be none) and files never hashed during the run (first read: e.g. the model
    folder written by save_pretrained);
against the total size of the bundle, and against a full re-hash of the same bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import provenance.bundle as pbundle
from provenance import formats
from provenance.bundle import BundleWriter, seal_folder, sealable_files

REPO = Path(__file__).resolve().parents[1]


def rchar() -> int:
    """Bytes this process has read through read()/pread() so far (page cache included)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


class SealSpy:
    """Wraps BundleWriter.seal: what the seal knew, what it hashed, how many bytes it read."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._orig_seal = BundleWriter.seal
        self._orig_hash_files = pbundle.hash_files

    def __enter__(self) -> SealSpy:
        spy = self

        def seal(writer: BundleWriter, progress: Any = None) -> str:
            hashed_paths: list[Path] = []
            hashed = [0]
            lock = threading.Lock()

            def count(n: int) -> None:
                with lock:
                    hashed[0] += n
                if progress is not None:
                    progress(n)

            def hash_files(paths: Any, workers: Any = None, progress: Any = None) -> Any:
                paths = list(paths)
                hashed_paths.extend(Path(p) for p in paths)
                return spy._orig_hash_files(paths, workers, progress)

            known = writer.known_digests()
            pbundle.hash_files = hash_files
            try:
                r0, t0 = rchar(), time.perf_counter()
                digest = spy._orig_seal(writer, count)
                seconds, r1 = time.perf_counter() - t0, rchar()
            finally:
                pbundle.hash_files = spy._orig_hash_files
            spy.records.append({"root": writer.root, "known": known, "digest": digest, "seconds": seconds,
                                "hashed_bytes": hashed[0], "rchar": r1 - r0 if r0 >= 0 else None,
                                "hashed_files": [p.relative_to(writer.root).as_posix() for p in hashed_paths]})
            return digest

        BundleWriter.seal = seal  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        BundleWriter.seal = self._orig_seal  # type: ignore[method-assign]
        pbundle.hash_files = self._orig_hash_files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--checkpoint-every", type=int, default=20)
    p.add_argument("--n-stories", type=int, default=2000)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    from training.train import main as train_main

    work = Path(tempfile.mkdtemp(prefix="prov-bench-seal-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "hf-datasets"))
    try:
        overrides = [f"train.steps={args.steps}", f"train.checkpoint_every={args.checkpoint_every}",
                     f"train.eval_every={args.steps}", f"data.n_stories={args.n_stories}", "data.manifest=null",
                     f"run.runs_dir={work / 'runs'}", f"data.root={work / 'data'}"]
        with SealSpy() as spy:
            rc = train_main(["--config", str(REPO / "configs" / "tiny-lm.yaml"), *overrides])
        if rc != 0 or not spy.records:
            print(f"training failed ({rc})", file=sys.stderr)
            return 1
        rec = spy.records[-1]
        root: Path = rec["root"]
        names = sealable_files(root)
        sizes = {n: (root / n).stat().st_size for n in names}
        total = sum(sizes.values())
        hashed = rec["hashed_files"]
        stale = [n for n in hashed if n in rec["known"]]  # hashed during the run, read again: a re-read
        first = [n for n in hashed if n not in rec["known"]]
        # the manifest the seal wrote is right: a full re-hash of the same files agrees
        t0, r0 = time.perf_counter(), rchar()
        full_bytes = [0]
        full_root = seal_folder(root, None, lambda n: full_bytes.__setitem__(0, full_bytes[0] + n))
        full_s, full_rchar = time.perf_counter() - t0, rchar() - r0
        out = {
            "command": " ".join([".venv/bin/python", *sys.argv]),
            "bundle_files": len(names), "bundle_bytes": total,
            "known_digests_at_seal": len(rec["known"]),
            "seal": {"seconds": round(rec["seconds"], 4), "hashed_bytes": rec["hashed_bytes"],
                     "rchar_bytes": rec["rchar"], "hashed_files": len(hashed)},
            "re_read_files_hashed_during_run": stale,
            "first_read_files_not_hashed_during_run": {n: sizes.get(n) for n in first},
            "full_rehash": {"seconds": round(full_s, 4), "hashed_bytes": full_bytes[0], "rchar_bytes": full_rchar},
            "root_digest_equal_to_full_rehash": full_root == rec["digest"],
            "checkpoints": {n: sizes[n] for n in names if n.startswith(formats.CHECKPOINT_DIR + "/")},
        }
        print(json.dumps(out, indent=2))
        print(f"seal hashed {rec['hashed_bytes']:,} of {total:,} bundle bytes ({rec['hashed_bytes'] / total:.1%}; "
              f"rchar {rec['rchar']:,}) in {rec['seconds']:.3f} s; a full re-hash reads {full_bytes[0]:,} bytes in "
              f"{full_s:.3f} s. Files hashed during the run and read again at seal: {len(stale)} "
              f"({'none: MET' if not stale else 'NOT MET: ' + ', '.join(stale)}); read for the first time at seal: "
              f"{', '.join(first) or 'none'}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return 0 if not stale and out["root_digest_equal_to_full_rehash"] else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
