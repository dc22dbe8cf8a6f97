"""SLSA provenance (v1) of a training run, as an in-toto Statement built from the bundle.

Subjects are the final model's files and every checkpoint (and, for a wrapped command,
its declared outputs), with their sha256 from the seal. The build definition holds what
the run was asked to do (config and command: externalParameters), how it was made
deterministic (internalParameters), and what it consumed (resolvedDependencies: the code
at its git commit, the source snapshot, every data file, the package lock and the
installed packages). Run details name the builder, the run id as invocation id, and the
start and finish times.

The training process attests to itself: this is SLSA Build level 1 provenance (it
exists and is complete), signed by whoever holds the release key.
"""

from __future__ import annotations

from typing import Any

from provenance import __version__, formats
from provenance.release.facts import Facts

BUILD_TYPE = "urn:fullyopen:build-type:training-run:v1"
BUILDER_ID = "urn:fullyopen:builder:prov"
LOCK_FILES = ("requirements.lock", "uv.lock", "poetry.lock", "requirements.txt")


def _sha(hexd: str) -> dict[str, str]:
    return {"sha256": hexd}


def _hex(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value.split(":", 1)[1] if value.startswith("sha256:") else value


def _code_dependencies(f: Facts) -> list[dict[str, Any]]:
    code = f.code
    deps: list[dict[str, Any]] = []
    commit = code.get("commit") if isinstance(code.get("commit"), str) else None
    remote = code.get("remote_url") if isinstance(code.get("remote_url"), str) else None
    if commit:
        uri = f"git+{remote}@{commit}" if remote else f"git+file:{code.get('root_name', 'repository')}@{commit}"
        annotations = {"dirty": code.get("dirty"), "branch": code.get("branch")}
        if code.get("dirty"):
            annotations["uncommitted_changes"] = formats.CODE_DIFF
        deps.append({"name": "source", "uri": uri, "digest": {"gitCommit": commit}, "annotations": annotations})
    for rel in (formats.CODE_SNAPSHOT, formats.CODE_DIFF):
        if rel in f.resources:
            deps.append({"name": rel, "uri": f"file:{rel}", "digest": _sha(f.resources[rel]),
                         "annotations": {"role": "source snapshot" if rel == formats.CODE_SNAPSHOT
                                         else "uncommitted changes (git diff, untracked files included)"}})
    files = code.get("files") if isinstance(code.get("files"), dict) else {}
    for name in sorted(files):
        if name.rsplit("/", 1)[-1] in LOCK_FILES or name == "pyproject.toml":
            hexd = _hex(files[name])
            if hexd:
                deps.append({"name": name, "uri": f"file:{formats.CODE_SNAPSHOT}#{name}", "digest": _sha(hexd),
                             "annotations": {"role": "package lock" if name != "pyproject.toml"
                                             else "declared dependencies"}})
    return deps


def _data_dependencies(f: Facts) -> list[dict[str, Any]]:
    deps = []
    training = set(f.training_datasets)
    for name, m in sorted(f.manifests.items()):
        src = m.get("source") if isinstance(m.get("source"), dict) else {}
        for e in m.get("files", []):
            if not isinstance(e, dict) or not isinstance(e.get("path"), str) or not _hex(e.get("sha256")):
                continue
            rel = f.data_file(name, e["path"])
            dep: dict[str, Any] = {"name": f"{name}/{e['path']}", "digest": _sha(str(_hex(e["sha256"])))}
            if rel in f.resources:
                dep["uri"] = f"file:{rel}"
            elif isinstance(src.get("url"), str):
                dep["uri"] = src["url"]
            ann: dict[str, Any] = {"dataset": name, "role": "training data" if name in training else "data",
                                   "license": m.get("license"), "size": e.get("size")}
            if "records" in e:
                ann["records"] = e["records"]
            dep["annotations"] = ann
            deps.append(dep)
    return deps


def _package_dependencies(f: Facts) -> list[dict[str, Any]]:
    deps = []
    if formats.ENV_JSON in f.resources:
        deps.append({"name": formats.ENV_JSON, "uri": f"file:{formats.ENV_JSON}",
                     "digest": _sha(f.resources[formats.ENV_JSON]),
                     "annotations": {"role": "the environment: interpreter, every installed package, hardware"}})
    pkgs = f.env.get("packages") if isinstance(f.env.get("packages"), dict) else {}
    for name, version in sorted(pkgs.items()):
        deps.append({"uri": f"pkg:pypi/{name}@{version}", "name": name})
    return deps


def build_statement(f: Facts) -> dict[str, Any]:
    """The SLSA v1 provenance statement of the run in f (digests from the bundle's seal)."""
    names = f.model_files() + f.checkpoint_files() + f.output_files()
    subjects = [{"name": n, "digest": _sha(f.resources[n])} for n in names]
    if not subjects and f.content_root_digest:  # a run without a model: the run's files as one subject
        subjects = [{"name": f.run_id, "digest": _sha(f.content_root_digest)}]
    python = (f.env.get("python") or {}).get("version") if isinstance(f.env.get("python"), dict) else None
    torch = f.env.get("torch") if isinstance(f.env.get("torch"), dict) else {}
    run = f.run
    internal = {
        "seed": run.get("seed"),
        "seeds": run.get("seeds"),
        "determinism": run.get("determinism"),
        "world_size": run.get("world_size"),
        "environment_variables": f.env.get("env_vars"),
        "pythonhashseed": f.env.get("pythonhashseed"),
        "cublas_workspace_config": f.env.get("cublas_workspace_config"),
    }
    external = {
        "config": f.cfg,
        "config_digest": f.config.get("digest"),
        "command": f.argv,
        "run_name": f.name,
        "datasets": list(f.manifests),
    }
    byproducts = [{"name": n, "uri": f"file:{n}", "digest": _sha(f.resources[n])}
                  for n in (formats.RUN_JSON, formats.CONFIG_JSON, formats.METRICS, formats.EVALS, formats.EVENTS,
                            formats.NOTES, formats.CHECKPOINT_INDEX, *formats.order_paths(0),
                            formats.order_paths(0, 1)[1])
                  if n in f.resources]
    return {
        "_type": formats.INTOTO_STATEMENT,
        "subject": subjects,
        "predicateType": formats.SLSA_PREDICATE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": _code_dependencies(f) + _data_dependencies(f) + _package_dependencies(f),
            },
            "runDetails": {
                "builder": {"id": f"{BUILDER_ID}@{__version__}",
                            "version": {"fullyopen": __version__, "python": python,
                                        "torch": torch.get("version") if torch else None}},
                "metadata": {"invocationId": f.run_id, "startedOn": run.get("started_at"),
                             "finishedOn": run.get("ended_at")},
                "byproducts": byproducts
                + ([{"name": "training root digest", "digest": _sha(f.content_root_digest),
                     "annotations": {"meaning": "root digest of the bundle's run files (OMS manifest, release "
                                                "documents left out)"}}] if f.content_root_digest else []),
            },
        },
    }
