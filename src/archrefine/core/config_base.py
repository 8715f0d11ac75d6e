"""The typed-config machinery that the simulator's `Config` and the real loop's `RealConfig` share.

Strict pydantic sections (no unknown keys, no silent conversions), a top-level model with TOML
dump and dotted `--set` overrides, one-line errors naming the key, and a load that says when a
file is another kind of config. Its own module so that core/config.py holds the simulator's
sections and real/config.py the real loop's, both on these public names.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any, ClassVar

import tomli_w
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the key and what is allowed."""


MAX_TEXT_BYTES = 4 << 20
"""The largest config or prompt-template file read: both are a few kilobytes of text."""


def read_text_file(
    path: str | Path, *, encoding: str = "utf-8", limit: int = MAX_TEXT_BYTES
) -> str:
    """The text of the regular file at `path`, read without hanging: a FIFO, a device
    (/dev/zero) or a file over `limit` bytes is an OSError naming the path, not a read that
    blocks forever or fills memory. Other errors are those of `open` and decoding."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            why = "Is a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise OSError(0, why, str(path))
        data = file.read(limit + 1)
    if len(data) > limit:
        raise OSError(0, f"larger than {limit >> 20} MiB", str(path))
    return data.decode(encoding)


class StrictModel(BaseModel):
    """A config section: an unknown key or a value of the wrong type is an error, never ignored;
    nor is NaN or an infinity (TOML's `nan`, `inf`), which no setting means and which would run
    through the loop into NaN metrics."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_lax_types(cls, value: Any, info: ValidationInfo) -> Any:
        """No silent conversions: `true` is not the integer 1, nor "3" a number, nor 1 a bool."""
        kind = cls.model_fields[info.field_name].annotation
        if kind in (int, float) and isinstance(value, bool | str):
            what = "integer" if kind is int else "number"
            got = "a boolean" if isinstance(value, bool) else "a string"
            raise ValueError(f"Input should be a valid {what}, not {got}")
        numpy_bool = getattr(getattr(value, "dtype", None), "kind", None) == "b"
        if kind is bool and not (isinstance(value, bool) or numpy_bool):
            raise ValueError("Input should be a valid boolean (true or false)")
        return value


class OverridableModel(StrictModel):
    """A top-level config: TOML dump and dotted overrides, validated as its own class.

    `others` names the other kinds of config file by keys only they have (as data: core
    imports no layer above it), so a file of one kind given where another is expected says
    which kind it is and where it goes, instead of naming its first unknown key."""

    label: ClassVar[str] = "config"
    others: ClassVar[tuple[tuple[str, tuple[str, ...], str], ...]] = ()

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> Any:
        """Return a copy with dotted keys replaced (`{"loop.top_k": 5}` or `["loop.top_k=5"]`)."""
        data = self.model_dump()
        items = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        for key, value in items.items():
            set_dotted(data, key, value)
        return validate_as(data, type(self))

    def to_toml(self) -> str:
        """The config as TOML, as a run's config.toml holds it (None values left out)."""
        return tomli_w.dumps(self.model_dump(exclude_none=True))


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "literal_error":
        allowed = first["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return f"{key}: {first['input']!r} is not one of {allowed}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if isinstance(first.get("input"), dict):  # a rule across keys: the message names them
        return f"{key}: {msg}"
    return f"{key}: {msg} (got {first.get('input')!r})"


def validate_as(data: dict[str, Any], model: type[BaseModel]) -> Any:
    """`data` validated as `model`; a ConfigError naming the first bad key, in one line."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `data`'s dotted `key` in place; a ConfigError names an unknown section or key. A
    table for a section (`generator={kind="paper"}`) sets the keys it names, not the section."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: unknown section")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"{key}: unknown key")
    if isinstance(node[parts[-1]], dict) and isinstance(value, dict):
        for name, inner in value.items():  # a table sets its keys; the section's others stay
            set_dotted(node, f"{parts[-1]}.{name}", inner)
        return
    node[parts[-1]] = value


def parse_value(text: str) -> Any:
    """Parse a command-line value as TOML (numbers, booleans), falling back to a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except (RecursionError, ValueError) as err:  # nested past the parser, 4,300+ digits
        raise ConfigError(f"--set value {text[:40]!r}...: {_too_big(err)}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["a.b=1", ...]` → `{"a.b": 1}`, each value parsed as TOML (else kept as a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        out[key.strip()] = parse_value(value.strip())
    return out


def load_as(
    model: type[OverridableModel],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Any:
    """Load a TOML file (or the defaults when `path` is None) as `model`, then apply `key=value`
    overrides; a file of another kind of config says which kind it is."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(read_text_file(path, encoding="utf-8-sig"))  # a BOM (Notepad) too
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:  # binary: not text at all
            raise ConfigError(f"{path}: not valid TOML ({err})") from None
        except (RecursionError, ValueError) as err:  # nested past the parser, 4,300+ digits
            raise ConfigError(f"{path}: {_too_big(err)}") from None
        except OSError as err:  # a directory, a symlink loop, no permission: one line, not a trace
            raise ConfigError(f"{path}: cannot read config ({err.strerror or err})") from None
    try:
        config = validate_as(data, model)
    except ConfigError as err:
        named = err if path is None else ConfigError(f"{path}: {err}")  # which file is wrong
        raise (_other_kind(path, data, model) or named) from None
    return config.with_overrides(overrides) if overrides else config


def _other_kind(path: Path | None, data: dict[str, Any], model: type) -> ConfigError | None:
    """A config file that failed as `model` but has keys only another kind has: say so."""
    if path is None:
        return None
    for label, keys, usage in getattr(model, "others", ()):
        found = [k for k in keys if _has_dotted(data, k)]
        if found:
            return ConfigError(
                f"{path}: a {label} (it has {', '.join(found[:3])}), not a {model.label}: "
                f"use it with {usage}"
            )
    return None


def _has_dotted(data: dict[str, Any], key: str) -> bool:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _too_big(err: BaseException) -> str:
    """What Python's TOML parser could not take: nesting past its stack, or an integer of more
    than Python's 4,300 digits."""
    return (
        "nested too deeply to read"
        if isinstance(err, RecursionError)
        else "a number too long to read (over 4,300 digits)"
    )
