"""The data order: runs write v2 (64-bit ids); v1 bundles (32-bit ids) still audit, prove, resolve and reproduce."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provenance import formats
from provenance.bundle import seal_folder


def as_v1(src: Path, dest: Path) -> Path:
    """A copy of a v2 bundle with its data order rewritten as v1 (what every earlier bundle holds), resealed."""
    shutil.copytree(src, dest)
    for hdr_path in sorted((dest / formats.ORDER_DIR).glob("rank*.json")):
        rank = int(hdr_path.name[4:-5])
        _, ids2, steps_rel = formats.order_paths(rank, 2)
        steps = list(formats.read_order(dest / ids2, dest / steps_rel))
        hdr = json.loads(hdr_path.read_text())
        prev, ids_out, recs = formats.ORDER_CHAIN_SEED, b"", b""
        for st in steps:
            b = formats.encode_ids(st.sample_ids, 1)
            prev = formats.chain_next(prev, st.step, b, 1)
            ids_out += b
            recs += formats.ORDER_STEP_RECORD.pack(st.step, len(st.sample_ids), prev)
        (dest / ids2).unlink()
        (dest / formats.order_paths(rank, 1)[1]).write_bytes(ids_out)
        (dest / steps_rel).write_bytes(recs)
        formats.atomic_write_json(hdr_path, formats.order_header(rank, hdr["world_size"], hdr["sampler"],
                                                                 hdr["dataset"], version=1))
    seal_folder(dest)
    return dest


def test_runs_write_v2_and_v1_bundles_still_audit_and_prove(tiny_bundle: Path, tmp_path: Path) -> None:
    from provenance.audit import audit
    from provenance.datasets.layouts import resolve_step
    from provenance.datasets.proofs import prove, verify_proof

    assert json.loads((tiny_bundle / "order" / "rank0.json").read_text())["schema"] == "fullyopen.data-order/v2"
    v1 = as_v1(tiny_bundle, tmp_path / "v1")
    assert (v1 / "order" / "rank0.ids.u32").is_file() and not (v1 / "order" / "rank0.ids.u64").exists()
    report = audit(v1)
    assert report.ok, json.dumps(report.to_dict())[:3000]
    order = list(formats.read_order(v1 / "order" / "rank0.ids.u64", v1 / "order" / "rank0.steps.bin"))
    assert order and all(st.version == 1 for st in order) and formats.verify_order_chain(order) is None
    sample = order[2].sample_ids[1]
    proof = prove(v1, sample=sample)
    verify_proof(proof)
    assert any(t["step"] == 3 for t in proof["trained"])
    assert [r["sample"] for r in resolve_step(v1, 3)] == list(order[2].sample_ids)
    # tampering with a v1 order is still caught by its chain
    raw = bytearray((v1 / "order" / "rank0.ids.u32").read_bytes())
    raw[4 * 9] ^= 1
    (v1 / "order" / "rank0.ids.u32").write_bytes(bytes(raw))
    seal_folder(v1)
    assert "chain breaks" in json.dumps(audit(v1).to_dict())


@pytest.mark.slow
def test_a_v1_bundle_reproduces_bitwise(tiny_bundle: Path, tmp_path: Path) -> None:
    from provenance.cli import main

    v1 = as_v1(tiny_bundle, tmp_path / "v1")
    assert main(["reproduce", str(v1)]) == 0
