"""One config system for every command: dataclass schemas, YAML files, dotted overrides.

A command declares its options as a dataclass whose fields carry a docstring-style comment
(``help`` metadata). ``load_config`` merges, in order, the dataclass defaults, an optional YAML
file, and ``key=value`` overrides, with OmegaConf checking every key and type: an unknown key or
a value of the wrong type is an error that names the key, never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the command's schema."""


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build a ``schema`` instance from defaults, a YAML file and ``key=value`` overrides."""
    base = OmegaConf.structured(schema)
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass a YAML file path")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as exc:  # a YAML syntax error: say where
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = OmegaConf.merge(base, *layers)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc, schema)) from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _explain(exc: OmegaConfBaseException, schema: type) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    msg = str(exc).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        known = ", ".join(f.name for f in dataclasses.fields(schema))
        return f"unknown config key {key!r}: {msg}. Known top-level keys: {known}"
    return f"bad config value for {key!r}: {msg}"


def flat_items(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"section.key": value}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat_items(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(saved: dict, new: dict, allowed=()) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for every dotted key where two configs differ, except the
    keys in ``allowed``."""
    a, b = flat_items(saved), flat_items(new)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k) and k not in allowed]


def to_dict(cfg: Any) -> dict:
    """A plain dict of a config dataclass (for saving next to a run)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def describe(schema: type, prefix: str = "") -> list[str]:
    """One line per option, ``key (type) = default  help``, recursing into nested dataclasses."""
    lines = []
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.type) or (
            isinstance(f.type, type) and dataclasses.is_dataclass(f.type)
        ):
            lines.extend(describe(f.type, key + "."))
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "???")
        )
        if dataclasses.is_dataclass(default):
            lines.extend(describe(type(default), key + "."))
            continue
        lines.append(f"  {key} = {default!r}    {f.metadata.get('help', '')}")
    return lines


def parse_cli(schema: type[T], argv: list[str], prog: str, doc: str = "") -> T | None:
    """Parse ``[CONFIG.yaml] [key=value ...]`` for a subcommand; ``None`` after printing --help."""
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: maxrl {prog} [CONFIG.yaml] [key=value ...]\n")
        if doc:
            print(doc.strip() + "\n")
        print("options (key = default    meaning):")
        print("\n".join(describe(schema)))
        return None
    path = None
    if argv and "=" not in argv[0]:
        path, argv = argv[0], argv[1:]
    return load_config(schema, path, argv)
