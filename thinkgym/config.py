"""Flat config dataclasses loaded from YAML with command-line overrides.

Every entry point (sft, train, eval, demo) has one flat dataclass whose fields are documented
with a ``#:`` comment or the class docstring. ``load_config`` rejects unknown keys and values of
the wrong type with a message that names the file and the key, before anything heavy loads; a
value given on the command line (:class:`Overrides`) is named by its option instead
(``--set lr=fast: expected a number, got 'fast'``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or override is invalid."""


class Overrides(dict):
    """Config overrides (key -> value) that remember where each came from on the command line
    (``--set lr=3e-4``, ``--max-steps``): an error about one names that option, not the YAML file."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.origins: dict[str, str] = {}
        #: The text each ``--set`` value was given as: a text field takes it as is (see :func:`parse_sets`).
        self.raw: dict[str, str] = {}

    def put(self, key: str, value: Any, origin: str) -> None:
        """Set ``key`` from option ``origin``; ``None`` (an option not given) sets nothing."""
        if value is not None:
            self[key] = value
            self.origins[key] = origin
            self.raw.pop(key, None)

    def update(self, other: Any = (), **kw: Any) -> None:
        """``dict.update``, taking the origins (and ``--set`` texts) of ``other`` (an
        :class:`Overrides`) along."""
        origins, raw, values = getattr(other, "origins", {}), getattr(other, "raw", {}), dict(other, **kw)
        for k in values:
            self.origins.pop(k, None)
            self.raw.pop(k, None)
        super().update(values)
        self.origins.update({k: origins[k] for k in values if k in origins})
        self.raw.update({k: raw[k] for k in values if k in raw})


def blame(message: str, source: str | Path, origins: dict[str, str] | None = None) -> str:
    """``message``, about the config key it starts with (``"lr must be > 0"``, ``"model: ..."``),
    prefixed with where that key's value came from: the option that set it, else ``source``."""
    m = re.match(r"(\w+)(: )?", message)
    origins = origins or {}
    origin = origins.get(m.group(1)) if m else None
    if origin is None and m:  # the key was set in part: --set task_params.arithmetic.max_value=5
        path = re.match(r"[\w.]+", message).group(0).rstrip(".") + "."
        origin = ", ".join(o for k, o in origins.items() if "." in k and (k + ".").startswith(path)) or None
    if origin is None:
        # A rule across keys ("eval_every=5 needs eval_prompts > 0") broken by an option that set
        # another key than the first, or part of the key: name the file and the options, not the file alone.
        involved = [o for k, o in origins.items()
                    if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", message)
                    or (m and "." in k and k.split(".", 1)[0] == m.group(1))]
        if involved:
            return f"{source} with {', '.join(dict.fromkeys(involved))}: {message}"
        return f"{source}: {message}"
    return f"{origin}: {message[m.end():] if m.group(2) else message}"  # "--model: 'x' is not ...", not "--model: model: ..."


def _coerce(value: Any, tp: Any, where: str) -> Any:
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
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if tp is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], source: str = "config", origins: dict[str, str] | None = None,
              other_commands: dict[str, str] | None = None) -> C:
    """Build ``cls`` from a mapping; unknown keys and wrong types raise :class:`ConfigError`.

    Messages name ``source`` and the key, or the option in ``origins`` (key -> ``"--set k=v"``)
    that gave the value. ``other_commands`` (``{"thinkgym sft": "module:ConfigClass"}``, imported
    only when keys are unknown) turns a file meant for another command into one line saying so."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    origins = origins or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        import difflib

        where = ", ".join(origins[k] for k in unknown) if all(k in origins for k in unknown) else source
        other = _other_command(unknown, other_commands or {})
        if other:
            raise ConfigError(f"{where}: {other}")
        hint = "; ".join(
            f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, fields, 1)) else "")
            for k in unknown
        )
        raise ConfigError(f"{where}: unknown key(s) {hint}")
    kwargs = {k: _coerce(v, hints[k], origins.get(k) or f"{source}: {k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as e:
            raise ConfigError(blame(str(e), source, origins)) from None
    return obj


def _other_command(unknown: list[str], other_commands: dict[str, str]) -> str | None:
    """"this looks like a `thinkgym sft` config ...": most of the (at least 3) unknown keys are
    fields of another command's config class, so listing them with near-miss suggestions would mislead."""
    import importlib

    best = None
    for command, target in other_commands.items():
        module, _, name = target.partition(":")
        theirs = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
        n = len(theirs.intersection(unknown))
        if n >= 3 and 2 * n > len(unknown) and (best is None or n > best[0]):
            best = (n, command, name)
    if best is None:
        return None
    n, command, name = best
    which = f"its {n} unknown keys" if n == len(unknown) else f"{n} of its {len(unknown)} unknown keys"
    return f"this looks like a `{command}` config ({which} are {name} fields); use {command}"


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                other_commands: dict[str, str] | None = None) -> C:
    """Load ``cls`` from a YAML file (optional), then apply ``overrides`` (``None`` values skipped).

    An :class:`Overrides` names the options its values came from in messages; ``other_commands``:
    see :func:`from_dict`."""
    import yaml

    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        if p.is_dir():
            raise ConfigError(f"config: {p} is a directory, not a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.load(p.read_bytes().decode("utf-8"), Loader=_unique_key_loader()) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({_yaml_problem(e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of keys to values at the top level")
        data.update(loaded)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    origins = {k: o for k, o in getattr(overrides, "origins", {}).items() if k in given}
    raw = getattr(overrides, "raw", {})
    hints = typing.get_type_hints(cls) if raw else {}
    for k, v in given.items():
        if k in raw and k in hints and _is_text_type(hints[k]):
            v = _text_value(raw[k], v)
        if "." in k and k.split(".", 1)[0] in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            _set_dotted(cls, data, k, v, origins, source)
        else:
            data[k] = v
    return from_dict(cls, data, source, origins, other_commands)


def _is_mapping_type(tp: Any) -> bool:
    if tp is dict or typing.get_origin(tp) is dict:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_mapping_type(a) for a in typing.get_args(tp))
    return False


def _set_dotted(cls: type, data: dict[str, Any], key: str, value: Any, origins: dict[str, str], source: str) -> None:
    """``--set task_params.arithmetic.max_value=5``: set one entry inside a mapping field, keeping
    the rest of the mapping the file (or an earlier override) gave. The field's origin becomes the
    option, so an error about it names the option."""
    head, *path = key.split(".")
    where = origins.pop(key, None) or f"{source}: {key}"
    if not all(path):
        raise ConfigError(f"{where}: empty part in the dotted key {key!r}")
    if not _is_mapping_type(typing.get_type_hints(cls)[head]):
        raise ConfigError(f"{where}: {head} is not a mapping, so {key!r} reaches into nothing; "
                          f"set {head} itself (--set {head}=VALUE)")
    node = data.get(head)
    node = {} if node is None else node
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: {head} is {node!r}, not a mapping")
    root = node = copy.deepcopy(node)
    for i, part in enumerate(path[:-1]):
        nxt = node.setdefault(part, {})
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where}: {head}.{'.'.join(path[:i + 1])} is {nxt!r}, not a mapping")
        node = nxt
    node[path[-1]] = value
    data[head] = root
    origins[head] = f"{origins[head]}, {where}" if head in origins else where


def _unique_key_loader() -> Any:
    """yaml's SafeLoader, refusing a key given twice in one mapping (it would keep the last
    silently: a second ``lr:`` further down a long file wins unnoticed)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": keys it brings may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: construct_mapping raises its own error
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (lines {first} and {key_node.start_mark.line + 1})",
                        key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return Loader


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _is_text_type(tp: Any) -> bool:
    """A field holding text: ``str``, ``Path``, either of them or ``None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return bool(args) and all(_is_text_type(a) for a in args)
    return tp is str or (isinstance(tp, type) and issubclass(tp, os.PathLike))


def _text_value(text: str, parsed: Any) -> Any:
    """The value of a text field given as ``--set key=text``: the text itself, not its YAML
    reading (``2024-01-01`` is no date, ``1.10`` no float that prints as 1.1). A value quoted
    whole in YAML (``'"1.10"'``) is the string inside the quotes; ``null`` stays None."""
    if parsed is None:
        return None
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"" and isinstance(parsed, str):
        return parsed
    return text


def parse_sets(items: list[str], flag: str = "--set", cls: type | None = None) -> Overrides:
    """``["kl_coef=0.01", "envs=[a, b]"]`` -> overrides, each value parsed as YAML, each from
    its option (``--set kl_coef=0.01``).

    The text of each value is kept too (``Overrides.raw``): :func:`load_config` gives a field
    typed ``str`` or ``Path`` that text as is, so ``--set output_dir=2024-01-01`` is a folder name,
    not a date. With ``cls`` (the config class) such a field takes text that is not valid YAML
    too (``--set system_prompt=Note: a: b``).

    A malformed entry is a :class:`ConfigError` naming it, on one line (a YAML error's own text
    spans several lines with a caret drawing)."""
    import yaml

    hints = typing.get_type_hints(cls) if cls is not None else {}
    out = Overrides()
    for kv in items:
        key, sep, value = kv.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {kv!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            if not (key in hints and _is_text_type(hints[key])):
                raise ConfigError(f"{flag} {key}: value {value!r} is not valid YAML ({_yaml_problem(e)})") from None
            out[key] = value
        out.origins[key] = f"{flag} {kv}"
        out.raw[key] = value
    return out


def _yaml_problem(e: Exception) -> str:
    """A YAML error on one line (its own text spans several, with a caret drawing)."""
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def check_output_dir(path: str | Path, key: str = "output_dir") -> None:
    """A run directory that could be created: neither it nor a parent is an existing file
    (checked before a run starts, so it does not fail at its first write)."""
    out = Path(path)
    there = next((p for p in (out, *out.absolute().parents) if p.exists()), None)
    if there is not None and not there.is_dir():
        raise ConfigError(f"{key}: {str(there)!r} exists and is not a directory")
    if there is not None:
        # Writable? os.access says yes to root on a read-only or virtual file system (/sys, a
        # read-only mount), so try: a private folder made and removed at once.
        import tempfile

        try:
            os.rmdir(tempfile.mkdtemp(prefix=".thinkgym-write-check-", dir=there))
        except OSError as e:
            raise ConfigError(output_dir_error(out, key, e, there)) from None


def output_dir_error(out: str | Path, key: str, e: OSError, where: str | Path | None = None) -> str:
    """The one-line message for an output directory that cannot be written (``e`` the OSError)."""
    at = f" ({str(where)!r} is not writable)" if where is not None and Path(where) != Path(out) else ""
    return f"{key}: cannot write to {str(out)!r}{at}: {e.strerror or e}"


#: Logs the trainers append to in their output_dir (metrics.jsonl; TensorBoard events: GRPO writes
#: tensorboard/, SFT tb/). A run that replaces an earlier one (overwrite) removes them too: kept,
#: the earlier run's curves would mix with the new run's.
RUN_LOGS = ("metrics.jsonl", "tensorboard", "tb")


def earlier_run(out: str | Path, patterns: tuple[str, ...]) -> list[Path]:
    """What an earlier run left in ``out``: the paths matching ``patterns`` (globs under ``out``)."""
    return sorted(p for pat in patterns for p in Path(out).glob(pat))


def _names(out: str | Path, paths: list[Path]) -> str:
    return ", ".join(str(p.relative_to(out)) for p in paths)


def check_fresh_run(out: str | Path, patterns: tuple[str, ...], overwrite: bool) -> None:
    """A fresh run may start in ``out`` only if no earlier run left checkpoints or models there,
    or ``overwrite`` says to replace them: they would otherwise be pruned, mixed with this run's
    (old checkpoints outrank new ones by step) or overwritten without a word. The refusal lists
    them and the earlier run's logs (:data:`RUN_LOGS`), which ``overwrite`` removes too."""
    found = earlier_run(out, patterns)
    if found and not overwrite:
        names = _names(out, found[:4]) + (", ..." if len(found) > 4 else "")
        logs = earlier_run(out, RUN_LOGS)
        names += f"; logs {_names(out, logs)}" if logs else ""
        raise ConfigError(f"output_dir: {str(out)!r} holds an earlier run ({names}); continue it with --resume, "
                          "set overwrite: true to replace it, or choose another output_dir")


def clear_earlier_run(out: str | Path, patterns: tuple[str, ...], who: str) -> None:
    """Remove what :func:`check_fresh_run` found (the run was told to overwrite it) and the earlier
    run's logs (:data:`RUN_LOGS`), saying so."""
    import shutil
    import sys

    found = earlier_run(out, patterns) + earlier_run(out, RUN_LOGS)
    if found:
        print(f"[{who}] overwrite: removing an earlier run's {_names(out, found)} in {out}", file=sys.stderr)
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def check_finite(cfg: Any) -> None:
    """Every float field of the dataclass ``cfg`` is finite: YAML's ``.nan`` / ``.inf`` and
    ``--set lr=nan`` load as floats, and a NaN passes every range check (all comparisons are False)."""
    import math

    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{f.name} must be a finite number, got {v}")
