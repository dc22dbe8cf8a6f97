"""Strict YAML configs mapped onto dataclasses.

Unknown keys, wrong types and missing files are errors that name the key and
the file. `key=value` overrides use dotted keys and YAML scalars.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config is invalid. Callers print it and exit with status 2."""


def path_field(default: Any = dataclasses.MISSING, *, must_exist: bool = True) -> Any:
    """A str field that names a file or folder; checked to exist after loading."""
    meta = {"path": True, "must_exist": must_exist}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# metadata of a dict field that receives the keys a strict dataclass does not know (kept, not
# refused): `extra: dict[str, Any] = field(default_factory=dict, metadata=EXTRA)`, so that a
# record of a v1 file that a newer writer extended still loads
EXTRA = {"extra": True}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and typing.get_origin(others[0]) is typing.Literal:
            raise ConfigError(errors[0] + (" (or null)" if len(others) < len(args) else ""))
        raise ConfigError(f"{source}: key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ConfigError(f"{source}: key '{key}' must be one of {', '.join(repr(a) for a in allowed)}, "
                              f"got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, source, prefix=f"{key}.")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: key '{key}' must be float, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}' must be int, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{source}: key '{key}' must be {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{source}: key '{key}' has an unsupported type {_type_name(tp)}")


@functools.cache
def _shape(cls: type[Any]) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]], str | None]:
    """(type hints, fields, the extra-keys field) of a dataclass, resolved once (records are parsed by the
    thousand: a notes file, a checkpoint index)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return typing.get_type_hints(cls), fields, next((f.name for f in fields.values() if f.metadata.get("extra")),
                                                     None)


def _build(cls: type[T], data: dict[str, Any], source: str, prefix: str = "") -> T:
    hints, fields, extra = _shape(cls)
    kwargs: dict[str, Any] = {}
    for k in data:
        if k not in fields or k == extra:
            if extra is not None:
                kwargs.setdefault(extra, {})[k] = data[k]
                continue
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{prefix}{k}' (known keys here: {known})")
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name == extra:
            continue
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{key}'")
    return cls(**kwargs)


def _check_paths(obj: Any, base: Path, source: str, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_paths(value, base, source, f"{key}.")
        elif f.metadata.get("path") and f.metadata.get("must_exist") and value:
            p = Path(value)
            if not p.is_absolute():
                p = base / p
            if not p.exists():
                raise ConfigError(f"{source}: key '{key}' names a file that does not exist: {value}")


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_override(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: override '{key}': '{p}' is not a mapping")
        node = nxt
    node[parts[-1]] = value


def load(cls: type[T], path: str | Path, overrides: list[str] | None = None, base_dir: Path | None = None) -> T:
    """Load `path` into dataclass `cls`, apply `key=value` overrides, validate strictly.

    Relative paths in path fields are resolved against base_dir (default: the
    current folder). Raises ConfigError naming the file and the key.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(data, key, value, f"{source} (override {text!r})")
    cfg = _build(cls, data, source)
    _check_paths(cfg, base_dir or Path.cwd(), source)
    return cfg


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<config>") -> T:
    return _build(cls, data, source)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def override_changes(cls: type[Any], path: str | Path, overrides: list[str] | None) -> list[dict[str, Any]]:
    """Every key that the overrides change from the config file's value: [{"key", "old", "new"}], in the
    order given (an override equal to the file's value changes nothing and is left out)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = _flat(to_dict(_build(cls, data, str(path))))
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(data, key, value, f"{path} (override {text!r})")
    new = _flat(to_dict(_build(cls, data, str(path))))
    keys: list[str] = []
    for text in overrides or []:
        key = parse_override(text)[0]
        keys += [k for k in new if (k == key or k.startswith(f"{key}.")) and k not in keys]
        if key not in new and key in base and key not in keys:  # a mapping emptied by the override
            keys.append(key)
    return [{"key": k, "old": base.get(k), "new": new.get(k)} for k in keys if base.get(k) != new.get(k)]
