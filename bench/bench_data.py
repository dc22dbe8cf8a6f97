"""Data manifests at scale: first pass vs sha256sum and dvc add, the warm hash cache, prov prove (issue 13).

    .venv/bin/python bench/bench_data.py [--token-files 2000] [--token-mib 1] [--docs 100000] [--json out.json]

Generated data under a temporary folder (removed at the end):
  tokens  --token-files flat uint16 token files of --token-mib MiB each (layout token-stream);
  docs    --docs small JSON-lines files, one document each (layout documents).

For each, one run of each tool (the machine is shared: ratios, never timed assertions):
  sha256sum      coreutils over every file (`find -print0 | xargs -0 sha256sum`), one core;
  dvc add        in a fresh `git init` + `dvc init` repository (md5 and a copy into .dvc/cache);
  prov first     `prov data manifest DIR` with an empty PROV_CACHE_DIR: sha256, record counts and
                 the Merkle roots in one read pass, every core; fills the cache;
  prov warm      the same command again: every file is found in the cache by (device, inode,
                 size, mtime_ns); the manifest bytes are compared with the first pass's;
  in-process     build_manifest() first and warm inside this process (no interpreter start-up):
                 the ratio the cache itself gives.
Files are back-dated by a minute after they are written, as data that has been sitting on disk
(a cache entry made within 2 s of a file's mtime is "racy" and is never trusted).
Each child's peak RSS (ru_maxrss) shows that memory stays bounded (no file is read whole).
Then a bundle over the docs dataset (start_run with 200 recorded steps of 32 random ids): prov
prove --file of a trained document and of an absent one (non-membership), proof sizes, and
prov verify-proof times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1 << 20
BIN = Path(sys.executable).parent
PROV = [str(BIN / "prov")]


def _timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
           shell: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd if not shell else " ".join(cmd), env=env, cwd=cwd, shell=shell,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed: {err[-2000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
            "max_rss_mib": round(ru.ru_maxrss / 1024, 1), "stderr": err.strip().splitlines()[-1:] if err else []}


def _cpu() -> float:
    """CPU seconds of this process, all its threads (what the machine's load does not inflate)."""
    r = os.times()
    return r.user + r.system


def _backdate(root: Path) -> None:
    past = time.time_ns() - 60 * 10**9
    for dirpath, _, files in os.walk(root):
        for f in files:
            os.utime(os.path.join(dirpath, f), ns=(past, past))


def make_tokens(root: Path, n: int, mib: int) -> int:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    block = rng.integers(0, 50257, mib * MIB // 2, dtype=np.uint16).astype("<u2").tobytes()
    for i in range(n):
        # distinct files: the block rotated by the file index
        k = (i * 7919) % len(block) & ~1
        (root / f"shard-{i:05d}.bin").write_bytes(block[k:] + block[:k])
    _backdate(root)
    return n * len(block)


def make_docs(root: Path, n: int) -> int:
    root.mkdir(parents=True)
    rnd = random.Random(0)
    words = "the a small cat dog ran sat on mat hill river star stone song map sea found wrote".split()
    total = 0
    for i in range(n):
        sub = root / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir()
        text = " ".join(rnd.choice(words) for _ in range(rnd.randint(20, 120)))
        data = (json.dumps({"id": i, "text": text}) + "\n").encode()
        (sub / f"doc-{i:06d}.jsonl").write_bytes(data)
        total += len(data)
    _backdate(root)
    return total


def bench_dataset(name: str, root: Path, tmp: Path, layout: list[str], dvc: bool) -> dict[str, Any]:
    env = dict(os.environ, PROV_CACHE_DIR=str(tmp / f"cache-{name}"), DVC_NO_ANALYTICS="1",
               DVC_SITE_CACHE_DIR=str(tmp / "dvc-site"))
    out: dict[str, Any] = {}
    subprocess.run(f"find {root} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)  # warm pages
    out["sha256sum"] = _timed([f"find {root} -type f -print0 | xargs -0 sha256sum > /dev/null"], shell=True)
    out["prov_first"] = _timed([*PROV, "data", "manifest", str(root), *layout, "-o", str(tmp / f"{name}-1.json")],
                               env=env)
    out["prov_warm"] = _timed([*PROV, "data", "manifest", str(root), *layout, "-o", str(tmp / f"{name}-2.json")],
                              env=env)
    out["same_manifest_bytes"] = (tmp / f"{name}-1.json").read_bytes() == (tmp / f"{name}-2.json").read_bytes()
    # in-process: the cache's own ratio, without interpreter start-up
    from provenance.capture.data import build_manifest
    from provenance.datasets.hashcache import HashCache
    from provenance.datasets.scan import Stats
    from provenance.integrations.sources import local_dataset

    spec = local_dataset(root)
    if "--layout" in layout:
        spec.layout = ({"type": "documents"} if "documents" in layout else
                       {"type": "token-stream", "dtype": "uint16", "window": 1024, "sample": "window"})
    cache = HashCache(tmp / f"cache-inproc-{name}" / "hashes.sqlite")
    times = []
    for _ in range(2):
        s = Stats()
        t0, c0 = time.perf_counter(), _cpu()
        build_manifest(spec, cache=cache, stats=s)
        times.append((time.perf_counter() - t0, _cpu() - c0, s.files_hashed, s.files_cached))
    cache.close()
    out["inproc_first_s"], out["inproc_warm_s"] = round(times[0][0], 3), round(times[1][0], 4)
    out["inproc_first_cpu_s"], out["inproc_warm_cpu_s"] = round(times[0][1], 3), round(times[1][1], 4)
    out["inproc_warm_files_cached"] = times[1][3]
    if dvc:
        repo = tmp / f"dvc-{name}"
        repo.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True, env=env)
        shutil.move(str(root), repo / "data")
        out["dvc_add"] = _timed([str(BIN / "dvc"), "add", "-q", "data"], env=env, cwd=repo)
        shutil.move(str(repo / "data"), root)
        shutil.rmtree(repo)
    first = out["prov_first"]["wall_s"]
    out["ratios"] = {
        "prov_first_vs_sha256sum_wall": round(first / out["sha256sum"]["wall_s"], 2),
        "prov_first_over_warm_cli": round(first / out["prov_warm"]["wall_s"], 1),
        "inproc_first_over_warm": round(out["inproc_first_s"] / max(out["inproc_warm_s"], 1e-6), 1),
        "inproc_first_over_warm_cpu": round(out["inproc_first_cpu_s"] / max(out["inproc_warm_cpu_s"], 1e-6), 1),
        "prov_first_vs_sha256sum_cpu": round(out["prov_first"]["cpu_s"] / max(out["sha256sum"]["cpu_s"], 1e-6), 2),
    }
    if dvc:
        out["ratios"]["dvc_add_over_prov_first_wall"] = round(out["dvc_add"]["wall_s"] / first, 2)
    return out


def bench_prove(docs: Path, tmp: Path, n_docs: int) -> dict[str, Any]:
    from provenance import start_run
    from provenance.datasets.proofs import prove, verify_proof
    from provenance.integrations.sources import local_dataset

    os.environ["PROV_CACHE_DIR"] = str(tmp / "cache-docs")  # the first-pass cache: prove reads leaf hashes there
    spec = local_dataset(docs, name="docs")
    spec.layout = {"type": "documents"}
    rnd = random.Random(1)
    batches = {s: [rnd.randrange(n_docs) for _ in range(32)] for s in range(1, 201)}
    with start_run({"bench": "prove"}, name="bench-prove", runs_dir=str(tmp / "runs"), seed=0, threads=1,
                   datasets=[spec], capture_output=False,
                   sampler={"algorithm": "uniform", "n_samples": n_docs}) as run:
        for s, ids in batches.items():
            run.record_batch(s, ids)
            run.log(s, loss=0.0)
    bundle = run.root
    trained = batches[17][3]
    files = sorted(p for p in docs.rglob("*.jsonl"))
    doc = files[trained]
    absent = tmp / "absent.jsonl"
    absent.write_text(json.dumps({"id": -1, "text": "never written"}) + "\n")
    out: dict[str, Any] = {"bundle_files": sum(1 for _ in bundle.rglob("*") if _.is_file())}
    for label, path in (("member", doc), ("absent", absent)):
        t0, c0 = time.perf_counter(), _cpu()
        proof = prove(bundle, file=path, dataset="docs")
        t1, c1 = time.perf_counter(), _cpu()
        data = json.dumps(proof, sort_keys=True, indent=2).encode()
        t2 = time.perf_counter()
        verify_proof(json.loads(data))
        t3 = time.perf_counter()
        out[label] = {"claim": proof["claim"], "prove_s": round(t1 - t0, 3), "prove_cpu_s": round(c1 - c0, 3),
                      "verify_s": round(t3 - t2, 4),
                      "proof_bytes": len(data), "steps": sorted({t["step"] for t in proof.get("trained", [])})}
        if label == "member":
            out[label]["order_bytes_in_proof"] = len(json.dumps(proof["order"]))
            out[label]["commitment_bytes_in_proof"] = len(proof["dataset"]["commitment_text"])
            out[label]["resources_in_proof"] = len(proof["bundle"]["resources"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--token-files", type=int, default=2000)
    p.add_argument("--token-mib", type=int, default=1)
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--no-dvc", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="prov-bench-data-"))
    result: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "load_before": os.getloadavg()}
    try:
        t0 = time.perf_counter()
        result["tokens_bytes"] = make_tokens(tmp / "tokens", args.token_files, args.token_mib)
        result["docs_bytes"] = make_docs(tmp / "docs", args.docs)
        result["generate_s"] = round(time.perf_counter() - t0, 1)
        result["cli_startup"] = _timed([*PROV, "data", "--help"])  # interpreter and imports, no work
        result["tokens"] = bench_dataset("tokens", tmp / "tokens", tmp,
                                         ["--layout", "token-stream", "--window", "1024"], not args.no_dvc)
        print(json.dumps(result["tokens"]["ratios"]), file=sys.stderr)
        result["docs"] = bench_dataset("docs", tmp / "docs", tmp, ["--layout", "documents"], not args.no_dvc)
        print(json.dumps(result["docs"]["ratios"]), file=sys.stderr)
        result["prove"] = bench_prove(tmp / "docs", tmp, args.docs)
        result["load_after"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
