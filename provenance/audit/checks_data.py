"""Checks of the data: the data manifests and the recorded data order."""

from __future__ import annotations

import array
import re
import sys
from typing import Any

from provenance import formats, records
from provenance.audit.results import CheckResult, SkipCheck, sha
from provenance.audit.view import BundleFileError, BundleView, is_hex64, is_int
from provenance.bundle import BundleError, safe_relpath


def _dataset_names(view: BundleView) -> list[str]:
    names = {rel.split("/")[1] for rel in view.under(formats.DATA_DIR) if rel.count("/") >= 2}
    return sorted(names)


def check_data(view: BundleView, out: CheckResult) -> None:
    names = _dataset_names(view)
    if not names:
        raise SkipCheck("no datasets in the bundle")
    n_files = 0
    for name in names:
        base = f"{formats.DATA_DIR}/{name}"
        mrel = f"{base}/manifest.json"
        if not view.has(mrel):
            out.error(f"{base}/ holds files but no manifest.json", file=mrel)
            continue
        try:
            rec = view.data_manifest(name)  # typed and strict: schema, name, files (path, size, sha256)
            m = view.json(mrel)  # the same object, for the layout and Merkle helpers that take it whole
        except BundleFileError as exc:
            out.error(exc.message, file=mrel)
            continue
        if rec.name != name:
            out.error(f"names the dataset {rec.name!r} but lies in {base}/", file=mrel)
        entries = rec.files
        listed: dict[str, records.DataFile] = {}
        for i, e in enumerate(entries):
            if not is_hex64(e.sha256):
                out.error(f"files[{i}] needs a path, a size and a hex sha256", file=mrel)
                continue
            try:
                p = safe_relpath(e.path)
            except BundleError:
                out.error(f"files[{i}] path {e.path!r} escapes the dataset or is malformed; refused", file=mrel)
                continue
            if p in listed:
                out.error(f"file {p} is listed twice", file=mrel)
            listed[p] = e
        bundled = rec.bundled_files
        files_dir = f"{base}/files"
        if bundled is not None:
            if bundled != files_dir:
                out.error(f"bundled_files is {bundled!r}; bundled data lives in {files_dir}", file=mrel)
            for p, e in sorted(listed.items()):
                rel = f"{files_dir}/{p}"
                n_files += 1
                if not view.has(rel):
                    out.error(f"{rel} is listed in the manifest but missing", file=rel,
                              expected=sha(e.sha256))
                    continue
                if view.digest(rel) != e.sha256:
                    out.error(f"{rel} does not match its data manifest", file=rel, expected=sha(e.sha256),
                              actual=sha(view.digest(rel)))
                elif view.size(rel) != e.size:
                    out.error(f"{rel} has {view.size(rel)} bytes, its manifest says {e.size}", file=rel)
            for rel in view.under(files_dir):
                if rel[len(files_dir) + 1:] not in listed:
                    out.error(f"{rel} is not listed in {mrel}", file=rel, actual=sha(view.digest(rel)))
            if isinstance(m.get("merkle"), dict) and len(listed) == len(entries) and all(
                    view.has(f"{files_dir}/{p}") for p in listed):  # recompute the Merkle roots (one read each)
                from provenance.capture.data import merkle_problems

                for p in listed:  # on disk for merkle_problems (an archive keeps small files in memory)
                    view.path(f"{files_dir}/{p}")
                for rel, problem in merkle_problems(m, view.root / files_dir):
                    out.error(problem, file=f"{files_dir}/{rel}" if rel else mrel)
        else:
            for rel in view.under(base):
                if rel not in (mrel, f"{base}/{formats.CROISSANT_NAME}", f"{base}/{formats.DATA_COMMITMENT}"):
                    out.warn(f"{rel} lies in the dataset's folder but the manifest bundles no files", file=rel)
        crel = f"{base}/{formats.DATA_COMMITMENT}"
        if view.has(crel):
            from provenance.capture.data import commitment

            try:
                if view.json(crel) != commitment(m):
                    out.error(f"does not match the Merkle roots and sample ids of {mrel}", file=crel)
            except BundleFileError as exc:
                out.error(exc.message, file=crel)
        samples = rec.samples
        if samples is not None:
            if not isinstance(samples, dict) or not is_int(samples.get("count")) or samples["count"] < 0:
                out.error("'samples' needs a non-negative integer count", file=mrel)
            elif "layout" in samples:  # documents, token-stream: the count follows from the layout and the files
                from provenance.datasets.layouts import manifest_problem

                problem = manifest_problem(m)
                if problem:
                    out.error(problem, file=mrel)
            else:
                entry = listed.get(str(samples.get("file")))
                if entry is None:
                    out.error(f"samples.file {samples.get('file')!r} is not one of the dataset's files", file=mrel)
                elif entry.records is not None and entry.records != samples["count"]:
                    out.error(f"samples.count is {samples['count']} but {samples.get('file')} has "
                              f"{entry.records} records", file=mrel)
    out.summary = f"{len(names)} datasets, {n_files} bundled files match their manifests"


def _sample_count(view: BundleView, dataset: str) -> int | None:
    try:
        samples = view.data_manifest(dataset).samples
    except BundleFileError:
        samples = None
    count = samples.get("count") if isinstance(samples, dict) else None
    return count if is_int(count) else None


def check_order(view: BundleView, out: CheckResult) -> None:
    headers: dict[int, str] = {}
    binaries: set[int] = set()
    for rel in view.under(formats.ORDER_DIR):
        mt = re.fullmatch(rf"{formats.ORDER_DIR}/rank(\d+)\.(json|ids\.u32|ids\.u64|steps\.bin)", rel)
        if mt is None:
            out.warn("not a data-order file", file=rel)
            continue
        (headers.__setitem__(int(mt[1]), rel) if mt[2] == "json" else binaries.add(int(mt[1])))
    for r in sorted(binaries - set(headers)):
        out.error(f"rank {r} has order data but no header", file=formats.order_paths(r)[0])
    if not headers:
        steps = view.metric_steps()
        if steps:
            out.warn(f"{formats.METRICS} logs {len(steps)} steps but no data order was recorded")
        raise SkipCheck("no data order recorded")
    summaries = []
    for rank, hrel in sorted(headers.items()):
        try:
            hdr = view.order_header(rank)  # typed and strict: schema v1 or v2, rank, sampler
        except BundleFileError as exc:
            out.error(exc.message, file=hrel)
            continue
        if hdr.rank != rank:
            out.error(f"states rank {hdr.rank!r} but is named rank{rank}", file=hrel)
        dataset = hdr.dataset
        n_samples: int | None = None
        if not dataset:
            out.warn("names no dataset: sample ids cannot be bounded", file=hrel)
        elif not view.has(formats.data_manifest_path(dataset)):
            out.error(f"refers to dataset {dataset!r}, which has no data manifest in the bundle", file=hrel)
        else:
            n_samples = _sample_count(view, dataset)
            if n_samples is None:
                out.warn(f"the manifest of {dataset!r} defines no sample count: ids cannot be bounded", file=hrel)
        declared = hdr.sampler.get("n_samples")
        if n_samples is not None and is_int(declared) and declared != n_samples:
            out.error(f"the sampler draws from {declared} samples, the manifest of {dataset!r} defines {n_samples}",
                      file=hrel, expected=str(n_samples), actual=str(declared))
        version = formats.ORDER_SCHEMAS[hdr.schema]  # v1: uint32 ids (.ids.u32), v2: uint64 (.ids.u64)
        _, ids_rel, steps_rel = formats.order_paths(rank, version)
        steps = _verify_order_stream(view, out, ids_rel, steps_rel, n_samples, dataset, version)
        if steps is None:
            continue
        if rank == 0:
            _compare_with_metrics(view, out, steps, steps_rel)
        if steps:
            summaries.append(f"rank {rank}: steps {steps[0]}..{steps[-1]}, chain intact"
                             + (f", ids < {n_samples}" if n_samples is not None else ""))
        else:
            summaries.append(f"rank {rank}: no steps")
    out.summary = "; ".join(summaries)


def _verify_order_stream(view: BundleView, out: CheckResult, ids_rel: str, steps_rel: str,
                         n_samples: int | None, dataset: Any, version: int = 1) -> list[int] | None:
    """Stream one rank's order (v1 or v2): chain, contiguity, id bounds, exact sizes. Returns its steps."""
    width = formats.order_id_width(version)
    if not view.has(steps_rel) and not view.has(ids_rel):
        return []
    for rel in (ids_rel, steps_rel):
        if not view.has(rel):
            out.error("missing", file=rel)
            return None
    rec_size = formats.ORDER_STEP_RECORD.size
    steps_size, ids_size = view.size(steps_rel), view.size(ids_rel)
    if steps_size % rec_size:
        out.error(f"{steps_size} bytes is not a whole number of {rec_size}-byte step records (torn?)",
                  file=steps_rel)
    steps: list[int] = []
    prev_chain = formats.ORDER_CHAIN_SEED
    chain_ok = True
    bad_ids = 0
    consumed = 0
    with open(view.path(steps_rel), "rb") as fs, open(view.path(ids_rel), "rb") as fi:
        while block := fs.read(rec_size * 4096):
            usable = len(block) - len(block) % rec_size
            for step, n, chain in formats.ORDER_STEP_RECORD.iter_unpack(block[:usable]):
                if steps and step != steps[-1] + 1:
                    out.error(f"step {step} follows step {steps[-1]}: the order's steps must be contiguous",
                              file=steps_rel)
                steps.append(step)
                if width * n > ids_size - consumed:
                    out.error(f"step {step} claims {n} sample ids but the file ends first (truncated)",
                              file=ids_rel)
                    return steps
                ids_bytes = fi.read(width * n)
                consumed += len(ids_bytes)
                if chain_ok:
                    expect = formats.chain_next(prev_chain, step, ids_bytes, version)
                    if expect != chain:
                        out.error(f"the digest chain breaks at step {step}: this step's batch, or an earlier one, "
                                  "was changed", file=steps_rel, expected=expect.hex(), actual=chain.hex())
                        chain_ok = False
                    prev_chain = chain
                if n_samples is not None and n:
                    ids = array.array("I" if width == 4 else "Q")
                    ids.frombytes(ids_bytes)
                    if sys.byteorder == "big":  # pragma: no cover
                        ids.byteswap()
                    top = max(ids)
                    if top >= n_samples:
                        bad_ids += 1
                        if bad_ids <= 5:
                            out.error(f"step {step} refers to sample id {top}, but the manifest of {dataset!r} "
                                      f"defines {n_samples} samples (ids 0..{n_samples - 1})", file=ids_rel)
    if bad_ids > 5:
        out.error(f"{bad_ids} steps in all refer to sample ids the manifest does not define", file=ids_rel)
    if consumed != ids_size:
        out.error(f"holds {ids_size - consumed} bytes more than its step records claim", file=ids_rel,
                  expected=str(consumed), actual=str(ids_size))
    return steps


def _compare_with_metrics(view: BundleView, out: CheckResult, steps: list[int], steps_rel: str) -> None:
    metric_steps = view.metric_steps()
    if not metric_steps:
        return
    have = set(steps)
    lacking = [s for s in metric_steps if s not in have]
    if lacking:
        out.error(f"{formats.METRICS} logs {len(lacking)} steps with no recorded batch (first: step {lacking[0]})",
                  file=steps_rel)
    beyond = [s for s in steps if s > metric_steps[-1]]
    if beyond and view.run_info.get("status") == "completed":
        out.warn(f"batches recorded for {len(beyond)} steps after the last logged step {metric_steps[-1]}",
                 file=steps_rel)
