"""Data manifests at scale: first pass vs sha256sum and dvc add, the warm hash cache, prov prove (issue 13).

    .venv/bin/python bench/bench_data.py [--token-files 2000] [--token-mib 10] [--docs 100000] [--json out.json]
        [--no-dvc] [--no-model-signing] [--tmp DIR] [--min-free-gib 10]

Generated data under a temporary folder (removed at the end):
  tokens  --token-files flat uint16 token files of --token-mib MiB each (layout token-stream);
  docs    --docs small JSON-lines files, one document each (layout documents).

For each, one run of each tool (the machine is shared: ratios, never timed assertions):
  sha256sum      coreutils over every file (`find -print0 | xargs -0 sha256sum`), one core;
  dvc add        in a fresh `git init` + `dvc init` repository, cache.type hardlink (md5; the cache is
                 hard links, no second copy of the data);
  model-signing  model_signing.hashing (1.1.1, file serialization, sha256, its default workers) in a
                 child process: the digest of every file, as `model_signing sign` computes it;
  prov first     `prov data manifest DIR` with an empty PROV_CACHE_DIR: sha256, record counts and
                 the Merkle roots in one read pass, every core; fills the cache;
  prov warm      the same command again: every file is found in the cache by (device, inode,
                 size, mtime_ns); the manifest bytes are compared with the first pass's;
  in-process     build_manifest() first, then warm: manifest_text() (what prov data manifest writes:
                 the cached text, unparsed) and build_manifest() (the text parsed into a dict), inside
                 this process (no interpreter start-up): the ratio the cache itself gives; and a bare
                 loop of one os.stat a file, the floor of any warm pass that looks at every file.
Every figure carries the load average before and after it and CPU seconds (wait4 for children,
os.times for this process) beside the wall time. A watchdog stops the benchmark (and its child)
when the file system's free space falls under --min-free-gib.
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


_CHILD: list[int] = []
_LOW_DISK: list[str] = []


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _watch_disk(path: Path, min_free: int) -> None:
    """Stop the running child and flag the benchmark when free space falls under min_free bytes."""
    while True:
        free = shutil.disk_usage(path).free
        if free < min_free:
            _LOW_DISK.append(f"free space {free / 2**30:.1f} GiB < {min_free / 2**30:.0f} GiB")
            for pid in list(_CHILD):
                os.kill(pid, 9)
            return
        time.sleep(2)


def _timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
           shell: bool = False) -> dict[str, Any]:
    """Run a child (posix_spawn), stdout to /dev/null: wall time, CPU seconds (wait4) and load before and
    after. The peak RSS is GNU time's %M: wait4's ru_maxrss of a child spawned from this large process
    would count this process's own peak (Linux records the old mm's high-water mark at exec)."""
    if _LOW_DISK:
        raise SystemExit(f"stopped: {_LOW_DISK[0]}")
    argv = ["/bin/sh", "-c", " ".join(cmd)] if shell else list(cmd)
    if cwd is not None:
        argv = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *argv]
    err_file = tempfile.NamedTemporaryFile(prefix="bench-data-err-", delete=False)
    err_file.close()
    actions = [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
               (os.POSIX_SPAWN_OPEN, 2, err_file.name, os.O_WRONLY | os.O_TRUNC, 0)]
    rss_file = err_file.name + ".rss"
    if Path("/usr/bin/time").is_file():
        argv = ["/usr/bin/time", "-o", rss_file, "-f", "%M", *argv]
    exe = argv[0] if "/" in argv[0] else (shutil.which(argv[0]) or argv[0])
    load0 = _load()
    t0 = time.perf_counter()
    pid = os.posix_spawn(exe, argv, env if env is not None else os.environ, file_actions=actions)
    _CHILD.append(pid)
    _, status, ru = os.wait4(pid, 0)
    _CHILD.remove(pid)
    wall = time.perf_counter() - t0
    err = Path(err_file.name).read_text(errors="replace")
    os.unlink(err_file.name)
    rss_kib = None
    if Path(rss_file).is_file():
        lines = Path(rss_file).read_text().split()
        rss_kib = int(lines[-1]) if lines and lines[-1].isdigit() else None
        os.unlink(rss_file)
    if _LOW_DISK:
        raise SystemExit(f"stopped: {_LOW_DISK[0]}")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed: {err[-2000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
            "max_rss_mib": round(rss_kib / 1024, 1) if rss_kib is not None else None, "load": [load0, _load()],
            "stderr": err.strip().splitlines()[-1:] if err else []}


def _inproc(fn: Any) -> tuple[Any, dict[str, Any]]:
    load0 = _load()
    t0, c0 = time.perf_counter(), _cpu()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - t0, 4), "cpu_s": round(_cpu() - c0, 4),
                 "load": [load0, _load()]}


def _cpu() -> float:
    """CPU seconds of this process, all its threads (what the machine's load does not inflate)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)  # microseconds, where os.times() counts 10 ms ticks
    return r.ru_utime + r.ru_stime


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


MODEL_SIGNING = ("import sys, model_signing.hashing as h; "
                 "m = h.Config().use_file_serialization(hashing_algorithm='sha256').hash(sys.argv[1]); "
                 "print(len(list(m.resource_descriptors())))")


def bench_dataset(name: str, root: Path, tmp: Path, layout: str, dvc: bool, model_signing: bool) -> dict[str, Any]:
    env = dict(os.environ, PROV_CACHE_DIR=str(tmp / f"cache-{name}"), DVC_NO_ANALYTICS="1",
               DVC_SITE_CACHE_DIR=str(tmp / "dvc-site"))
    out: dict[str, Any] = {}
    if sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 4 << 30:  # small: read from the page cache
        subprocess.run(f"find {root} -type f -print0 | xargs -0 cat > /dev/null", shell=True, check=True)
    out["sha256sum"] = _timed([f"find {root} -type f -print0 | xargs -0 sha256sum > /dev/null"], shell=True)
    print(f"{name}: sha256sum {out['sha256sum']}", file=sys.stderr)
    cli = [*PROV, "data", "manifest", str(root), "--layout", layout]
    out["prov_first"] = _timed([*cli, "-o", str(tmp / f"{name}-1.json")], env=env)
    print(f"{name}: prov first {out['prov_first']}", file=sys.stderr)
    out["prov_warm"] = _timed([*cli, "-o", str(tmp / f"{name}-2.json")], env=env)
    out["same_manifest_bytes"] = (tmp / f"{name}-1.json").read_bytes() == (tmp / f"{name}-2.json").read_bytes()
    # in-process: the cache's own ratio, without interpreter start-up
    from provenance import formats
    from provenance.capture.data import build_manifest, declare_layout, manifest_text
    from provenance.datasets.hashcache import HashCache
    from provenance.datasets.scan import Stats
    from provenance.integrations.sources import local_dataset

    spec, out["inproc_listing"] = _inproc(lambda: declare_layout(local_dataset(root), layout))
    cache = HashCache(tmp / f"cache-inproc-{name}" / "hashes.sqlite")
    s = Stats()
    first, out["inproc_first"] = _inproc(lambda: build_manifest(spec, cache=cache, stats=s))
    print(f"{name}: in-process first {out['inproc_first']}", file=sys.stderr)
    first_text = formats.dumps(first)
    del first
    for label, fn in (("inproc_warm_text", manifest_text), ("inproc_warm_text_2", manifest_text),
                      ("inproc_warm_dict", build_manifest)):
        st = Stats()
        got, out[label] = _inproc(lambda fn=fn, st=st: fn(spec, cache=cache, stats=st))
        out[label]["files_cached"] = st.files_cached
        out[label]["same_bytes"] = (got if isinstance(got, str) else formats.dumps(got)) == first_text
    cache.close()
    base = os.path.join(str(spec.root), "")
    _, out["stat_floor"] = _inproc(lambda: [os.stat(base + f) for f in spec.files])
    out["manifest_bytes"] = len(first_text)
    if model_signing:
        out["model_signing"] = _timed([sys.executable, "-c", MODEL_SIGNING, str(root)], env=env)
        print(f"{name}: model-signing {out['model_signing']}", file=sys.stderr)
    if dvc:
        repo = tmp / f"dvc-{name}"
        repo.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True, env=env)
        # hard links: no second copy of the data (and no fallback to copying: the list has one type)
        subprocess.run([str(BIN / "dvc"), "config", "cache.type", "hardlink"], cwd=repo, check=True, env=env)
        shutil.move(str(root), repo / "data")
        try:
            out["dvc_add"] = _timed([str(BIN / "dvc"), "add", "-q", "data"], env=env, cwd=repo)
        finally:
            shutil.move(str(repo / "data"), root)
            shutil.rmtree(repo)
        print(f"{name}: dvc add {out['dvc_add']}", file=sys.stderr)
    first_s, first_cpu = out["prov_first"]["wall_s"], out["prov_first"]["cpu_s"]
    r: dict[str, Any] = {
        "prov_first_vs_sha256sum_wall": round(first_s / out["sha256sum"]["wall_s"], 2),
        "prov_first_vs_sha256sum_cpu": round(first_cpu / max(out["sha256sum"]["cpu_s"], 1e-6), 2),
        "cli_first_over_warm_wall": round(first_s / out["prov_warm"]["wall_s"], 1),
        "cli_first_over_warm_cpu": round(first_cpu / max(out["prov_warm"]["cpu_s"], 1e-6), 1),
    }
    for label in ("inproc_warm_text", "inproc_warm_text_2", "inproc_warm_dict", "stat_floor"):
        r[f"inproc_first_over_{label}_wall"] = round(out["inproc_first"]["wall_s"]
                                                     / max(out[label]["wall_s"], 1e-6), 1)
        r[f"inproc_first_over_{label}_cpu"] = round(out["inproc_first"]["cpu_s"] / max(out[label]["cpu_s"], 1e-6), 1)
    for tool in ("dvc_add", "model_signing"):
        if tool in out:
            r[f"{tool}_over_prov_first_wall"] = round(out[tool]["wall_s"] / first_s, 2)
            r[f"{tool}_over_prov_first_cpu"] = round(out[tool]["cpu_s"] / max(first_cpu, 1e-6), 2)
    out["ratios"] = r
    return out


def bench_prove(root: Path, tmp: Path, name: str, layout: str, member: str) -> dict[str, Any]:
    """A bundle over the dataset (200 recorded steps of 32 random ids), then prove() a trained sample
    (member 'sample') or document (member 'file', plus an absent document), proof sizes, verify times."""
    from provenance import start_run
    from provenance.capture.data import declare_layout
    from provenance.datasets.proofs import prove, verify_proof
    from provenance.integrations.sources import local_dataset

    os.environ["PROV_CACHE_DIR"] = str(tmp / f"cache-{name}")  # the first pass's cache: prove reads leaf hashes there
    spec = declare_layout(local_dataset(root, name=name), layout)
    from provenance.capture.data import build_manifest

    n = build_manifest(spec)["samples"]["count"]
    rnd = random.Random(1)
    batches = {s: [rnd.randrange(n) for _ in range(32)] for s in range(1, 201)}
    (run, ), made = _inproc(lambda: [_bundle(start_run, spec, tmp, name, n, batches)])
    bundle = run.root
    trained = batches[17][3]
    out: dict[str, Any] = {"bundle_files": sum(1 for _ in bundle.rglob("*") if _.is_file()), "samples": n,
                           "make_bundle": made}
    queries: list[tuple[str, dict[str, Any]]] = []
    if member == "file":
        files = sorted(p for p in root.rglob("*.jsonl"))
        absent = tmp / "absent.jsonl"
        absent.write_text(json.dumps({"id": -1, "text": "never written"}) + "\n")
        queries = [("member", {"file": files[trained]}), ("absent", {"file": absent})]
    else:
        queries = [("member", {"sample": trained})]
    for label, q in queries:
        proof, timing = _inproc(lambda q=q: prove(bundle, dataset=name, **q))
        data = json.dumps(proof, sort_keys=True, indent=2).encode()
        _, vt = _inproc(lambda data=data: verify_proof(json.loads(data)))
        out[label] = {"claim": proof["claim"], "prove": timing, "verify": vt, "proof_bytes": len(data),
                      "steps": sorted({t["step"] for t in proof.get("trained", [])})}
        if label == "member":
            out[label]["order_bytes_in_proof"] = len(json.dumps(proof["order"]))
            out[label]["commitment_bytes_in_proof"] = len(proof["dataset"]["commitment_text"])
            out[label]["resources_in_proof"] = len(proof["bundle"]["resources"])
            out[label]["record_bytes_in_proof"] = len(json.dumps(proof["record"]))
    shutil.rmtree(bundle)
    return out


def _bundle(start_run: Any, spec: Any, tmp: Path, name: str, n: int, batches: dict[int, list[int]]) -> Any:
    with start_run({"bench": "prove"}, name=f"bench-prove-{name}", runs_dir=str(tmp / "runs"), seed=0, threads=1,
                   datasets=[spec], capture_output=False,
                   sampler={"algorithm": "uniform", "n_samples": n}) as run:
        for s, ids in batches.items():
            run.record_batch(s, ids)
            run.log(s, loss=0.0)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--token-files", type=int, default=2000)
    p.add_argument("--token-mib", type=int, default=10)
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--no-dvc", action="store_true")
    p.add_argument("--no-model-signing", action="store_true")
    p.add_argument("--tmp", default=None, help="where to generate the data (default: the system's temporary folder)")
    p.add_argument("--min-free-gib", type=float, default=10.0, help="stop when free space falls under this")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    need = args.token_files * args.token_mib * MIB + args.docs * 2048
    parent = Path(args.tmp or tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    if free - need < args.min_free_gib * 2**30:
        raise SystemExit(f"{parent}: {free / 2**30:.1f} GiB free, the data needs {need / 2**30:.1f} GiB and "
                         f"{args.min_free_gib} GiB must stay free")
    tmp = Path(tempfile.mkdtemp(prefix="prov-bench-data-", dir=parent))
    import threading

    threading.Thread(target=_watch_disk, args=(parent, int(args.min_free_gib * 2**30)), daemon=True).start()
    result: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "load_before": os.getloadavg(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        t0 = time.perf_counter()
        result["tokens_bytes"] = make_tokens(tmp / "tokens", args.token_files, args.token_mib)
        result["docs_bytes"] = make_docs(tmp / "docs", args.docs)
        result["generate_s"] = round(time.perf_counter() - t0, 1)
        result["cli_startup"] = _timed([*PROV, "data", "--help"])  # interpreter and imports, no work
        model_signing = not args.no_model_signing
        result["tokens"] = bench_dataset("tokens", tmp / "tokens", tmp, "token-stream:uint16:1024",
                                         not args.no_dvc, model_signing)
        print(json.dumps(result["tokens"]["ratios"]), file=sys.stderr)
        result["prove_tokens"] = bench_prove(tmp / "tokens", tmp, "tokens", "token-stream:uint16:1024", "sample")
        print(json.dumps(result["prove_tokens"]), file=sys.stderr)
        result["docs"] = bench_dataset("docs", tmp / "docs", tmp, "documents", not args.no_dvc, model_signing)
        print(json.dumps(result["docs"]["ratios"]), file=sys.stderr)
        result["prove_docs"] = bench_prove(tmp / "docs", tmp, "docs", "documents", "file")
        result["load_after"] = os.getloadavg()
    finally:
        result["ended"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        text = json.dumps(result, indent=2, sort_keys=True)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
