"""`prov reproduce LAST --chain`: reproduce a restarted run's whole chain of segments, back to step 0.

A resumed run is the next *segment* of the bundle whose checkpoint it continued from (run.json's
`segment`: the previous bundle's run id and root digest, the checkpoint's step and digest). The
chain is first verified as the audit's `segments` check does (every previous bundle against its
seal, its root digest and the checkpoint's digest as the next segment recorded them); then every
segment, oldest first, is reproduced on its own (`reproduce`: the first from step 0, each later one
from the checkpoint it continued from, as its own record says), and each link is checked: the
checkpoint the next segment continued from must be among the reproduced segment's checkpoints
with the same digest. All reproduced and every link matched: the chain reproduced from step 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from provenance import diff as pdiff
from provenance import formats, reader
from provenance.reproduce.options import EXIT_DIVERGED, EXIT_REFUSED, EXIT_REPRODUCED, Options
from provenance.reproduce.verdict import WITHIN

Say = Callable[[str], None]


@dataclass
class ChainOutcome:
    exit_status: int
    headline: str
    segments: list[dict[str, Any]] = field(default_factory=list)  # oldest first

    def to_dict(self) -> dict[str, Any]:
        return {"schema": formats.REPRODUCTION_CHAIN_SCHEMA, "exit_status": self.exit_status,
                "verdict": {EXIT_REPRODUCED: "reproduced", EXIT_DIVERGED: "not reproduced"}.get(self.exit_status,
                                                                                                 "refused"),
                "headline": self.headline, "segments": self.segments}


def _run_json(root: Path) -> Any:
    """A segment's run.json through reader.Bundle.of_files (bounded, never a link); FormatError names it."""
    try:
        return reader.Bundle.of_files(root, [formats.RUN_JSON]).json(formats.RUN_JSON)
    except reader.BundleFileError as exc:
        raise formats.FormatError(f"{root}: {exc}") from None


def chain_of(last: Path, dirs: Sequence[str | os.PathLike[str]] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """The segments of the chain ending at `last`, oldest first ({run_id, path, link}: link is the
    checkpoint the NEXT segment continued from), and the problems of the chain (verify_chain's)."""
    from provenance.audit.segments import verify_chain

    chain = verify_chain(last, dirs)
    problems = [f"{where}: {msg.replace('--segments DIR', '--chain-dir DIR')}" for where, msg in chain.errors]
    newest_first = [{"run_id": _run_json(last).get("run_id"), "path": str(last)}]
    newest_first += [{"run_id": s["run_id"], "path": s["path"]} for s in chain.segments]
    out = list(reversed(newest_first))
    for i, seg in enumerate(out[:-1]):
        nxt = _run_json(Path(out[i + 1]["path"]))
        ck = (nxt.get("segment") or {}).get("checkpoint") or {}
        seg["link"] = {"step": ck.get("step"), "sha256": ck.get("sha256"), "path": ck.get("path")}
    return out, problems


def reproduce_chain(last: str | os.PathLike[str], opts: Options | None = None,
                    dirs: Sequence[str | os.PathLike[str]] = (), say: Say | None = None) -> ChainOutcome:
    """Reproduce every segment of the chain ending at `last` (see the module's docstring)."""
    from provenance.reproduce import reproduce, safe_name

    opts = opts or Options()
    say = say or (lambda s: None)
    last = Path(last)
    if opts.steps is not None or opts.from_step is not None:
        return ChainOutcome(EXIT_REFUSED, "--chain reproduces every segment whole: --steps and --from-step "
                                          "are for one segment")
    if not (last / formats.RUN_JSON).is_file():
        return ChainOutcome(EXIT_REFUSED, f"{last}: not a run folder ({formats.RUN_JSON} is missing)")
    try:
        segments, problems = chain_of(last, dirs)
    except (OSError, ValueError, formats.FormatError) as exc:
        return ChainOutcome(EXIT_REFUSED, f"{last}: the chain of segments cannot be read ({exc})")
    if problems:
        return ChainOutcome(EXIT_REFUSED, f"the chain of segments does not verify: {problems[0]}"
                            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    worst = EXIT_REPRODUCED
    for i, seg in enumerate(segments):
        say(f"segment {i + 1} of {len(segments)}: {seg['run_id']}")
        workdir = opts.workdir / f"{i:02d}-{safe_name(str(seg['run_id']))}" if opts.workdir is not None else None
        outcome = reproduce(seg["path"], replace(opts, workdir=workdir), say=say)
        seg.update({"verdict": outcome.verdict, "exit_status": outcome.exit_status, "headline": outcome.headline,
                    "reproduction": str(outcome.bundle) if outcome.bundle else None})
        worst = max(worst, outcome.exit_status)
        link = seg.get("link")
        if link is not None and outcome.exit_status != EXIT_REFUSED:
            got = pdiff.checkpoint_digests(outcome.bundle).get(link["step"]) if outcome.bundle else None
            link["reproduced_sha256"] = f"sha256:{got}" if got else None
            link["matches"] = link["reproduced_sha256"] == link["sha256"]
            # under --tolerance the reproduction's checkpoint is not bitwise the original's: the link holds when the
            # segment reproduced within tolerance and the checkpoint continued from is the original's own of that
            # step (the reproduction checked it within the bounds)
            orig = pdiff.checkpoint_digests(Path(seg["path"])).get(link["step"])
            link["within_tolerance"] = (not link["matches"] and outcome.verdict == WITHIN
                                        and f"sha256:{orig}" == link["sha256"])
            if not (link["matches"] or link["within_tolerance"]):
                worst = max(worst, EXIT_DIVERGED)
    n = len(segments)
    last_step = _run_json(last).get("last_step")
    bad = next((s for s in segments if s.get("exit_status") != EXIT_REPRODUCED), None)
    broken = next((s for s in segments if s.get("link") and s["link"].get("matches") is False
                   and not s["link"].get("within_tolerance")), None)
    within = any(s.get("verdict") == WITHIN for s in segments)
    if worst == EXIT_REPRODUCED and within:
        headline = (f"the chain of {n} segment(s) reproduced (within tolerance) from step 0 to step {last_step}: every "
                    "segment, and every checkpoint a segment continued from within the bounds of the previous "
                    "segment's reproduction")
    elif worst == EXIT_REPRODUCED:
        headline = (f"the chain of {n} segment(s) reproduced from step 0 to step {last_step}: every segment, and every "
                    "checkpoint a segment continued from, as the previous segment's reproduction wrote it")
    elif bad is not None:
        headline = f"segment {bad['run_id']}: {bad['headline']}"
    else:
        assert broken is not None
        lk = broken["link"]
        headline = (f"segment {broken['run_id']}: its reproduction's checkpoint of step {lk['step']} is "
                    f"{lk['reproduced_sha256']}; the next segment continued from {lk['sha256']}")
    return ChainOutcome(worst, headline, segments)
