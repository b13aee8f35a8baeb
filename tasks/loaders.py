"""Task sources over fixed datasets: JSONL files and Hugging Face ``datasets`` (local only).

Rows are validated when the source is built, so a bad row fails fast with the file, the line
(or row number) and the field in the message instead of surfacing mid-training. The seed does
not change which row is item ``i``: a dataset is already index-addressable. A file is parsed once
per version per process (envs are built per episode); a changed file is read again.

Fields other than the question and answer are kept as item metadata unless ``metadata_fields``
lists the ones to keep. A ``solution`` field therefore becomes ``metadata.solution``, the worked
solution cold-start SFT trains on verbatim as the completion. SFT refuses solutions that are not
in the completion format (``<think>...</think>`` then one answer in ``\\boxed{}`` or
``<answer>...</answer>``; MATH's prose solutions are not) with an error naming the items: convert
them, or set the SFT config's ``require_solution_format: false`` to train on them as they are.
(``metadata_fields`` leaves the field out where it is only reference text, e.g. for RL.)

The grader is the ``grader`` param (``math`` if not given). A row may choose its own only
through its ``metadata`` object, ``{"metadata": {"grader": "countdown", "grader_kwargs":
{"exactly_once": true}}}`` (as items are written back by ``thinkgym sample-tasks --json`` and the
demo), and an explicit ``grader`` param overrides that choice for every row. A top-level column
named ``grader`` or ``grader_kwargs`` is refused rather than read as a grading choice: a dataset
column of that name (the person who marked the answer, say) must not pick how rewards are
computed; leave it out with ``metadata_fields``. When the source is built, each row's grader must
be registered, its ``grader_kwargs`` must be ones that grader reads, with values of the right
kind, and its answer must be a gold that grader can read (checked cheaply by type and shape for
the ``math``, ``countdown`` and ``code`` graders; the math itself is not parsed at load).
"""

from __future__ import annotations

import copy
import math
import os
import random
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from thinkgym.jsonl import iter_jsonl
from thinkgym.tasks.base import Item, TaskSource, register_task, show


class DatasetRowError(ValueError):
    """A dataset row is missing a field or has a value of the wrong type."""


def _has_non_finite(x: Any) -> bool:
    """Whether ``x`` is, or (in a list or mapping) holds, a float NaN or infinity."""
    if isinstance(x, float):
        return not math.isfinite(x)
    if isinstance(x, Mapping):
        return any(_has_non_finite(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_has_non_finite(v) for v in x)
    return False


_JSON_SCALARS = (str, int, float, bool, type(None))


def _non_json_type(x: Any) -> str | None:
    """The type name of the first value in ``x`` that JSON has no form for (a date, bytes, an
    image from an HF dataset column), or None. NaN is left to the callers that care."""
    if isinstance(x, _JSON_SCALARS):
        return None
    if isinstance(x, (list, tuple)):
        return next((t for t in map(_non_json_type, x) if t), None)
    if isinstance(x, Mapping):
        if not all(isinstance(k, str) for k in x):
            return "a mapping with non-string keys"
        return next((t for t in map(_non_json_type, x.values()) if t), None)
    return type(x).__name__


def _field_names(question_field: Any, answer_field: Any, metadata_fields: Any) -> list[str] | None:
    """Check the field mapping; ``metadata_fields`` may be "a,b" (as from ``--param``)."""
    for name, v in (("question_field", question_field), ("answer_field", answer_field)):
        if not isinstance(v, str) or not v:
            raise TypeError(f"{name} must be a field name (a non-empty string), got {v!r}")
    if metadata_fields is None:
        return None
    if isinstance(metadata_fields, str):
        # Iterating the string would ask for one field per character.
        metadata_fields = [f for f in metadata_fields.split(",") if f]
    if not isinstance(metadata_fields, (list, tuple)) or not all(isinstance(f, str) for f in metadata_fields):
        raise TypeError(f"metadata_fields must be a list of field names or None, got {metadata_fields!r}")
    return list(metadata_fields)


DEFAULT_GRADER = "math"
#: Columns that decide grading: a row sets them only inside its ``metadata`` object.
_GRADING_KEYS = ("grader", "grader_kwargs")


def _math_gold(a: Any) -> str | None:
    # What the math grader reads (verifiers.math_equiv._gold_str): a string or a number, or a
    # list of those for a multi-part answer.
    parts = a if isinstance(a, list) else [a]
    if not parts:
        return "an empty list"
    for x in parts:
        if isinstance(x, bool) or not isinstance(x, (str, int, float)):
            inner = " in the list" if isinstance(a, list) else ""
            return f"a {type(x).__name__}{inner} ({show(x, 60)}); it takes a string, a number or a list of those"
        if isinstance(x, str) and not x.strip():
            return "an empty string in the list"
    return None


def _refusal(check: Callable[[Any], Any]) -> Callable[[Any], str | None]:
    """A grader's own gold check (it raises on a bad gold) as an error text or None."""

    def problem(a: Any) -> str | None:
        try:
            check(a)
        except (TypeError, ValueError) as e:
            return str(e)
        return None

    return problem


def _countdown_gold(a: Any) -> str | None:
    from thinkgym.verifiers.countdown import _parse_gold

    return _refusal(_parse_gold)(a)


def _code_gold(a: Any) -> str | None:
    from thinkgym.verifiers.code import validate_tests

    return _refusal(validate_tests)(a)


#: Cheap checks (type and shape, never a parse by sympy or a run) of a gold each built-in grader
#: reads; an error text or None. Graders not listed (format, judge, plugins) take any gold.
_GOLD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "math": _math_gold, "countdown": _countdown_gold, "code": _code_gold,
}


def _gold_problem(grader: str, gold: Any) -> str | None:
    """Why ``gold`` cannot be read by ``grader`` (or by a part of a rubric), or None."""
    from thinkgym.verifiers import get_grader

    parts = get_grader(grader).parts  # a rubric hands the gold to its parts
    if parts:
        return next((f"{p}: {why}" for p in parts if (why := _gold_problem(p, gold))), None)
    check = _GOLD_CHECKS.get(grader)
    return check(gold) if check is not None else None


def check_grader(name: Any, what: str) -> str:
    """``name`` if it is a registered grader; else a :class:`ValueError` naming ``what``."""
    from thinkgym._registry import RegistryError
    from thinkgym.verifiers import GRADERS, get_grader

    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a grader name (a string), got {show(name, 60)}")
    try:
        get_grader(name)
    except RegistryError:
        raise ValueError(f"{what}: unknown grader {name!r}; known: {', '.join(GRADERS.names())}") from None
    return name


def _grading(meta: dict[str, Any], a: Any, where: str, answer_field: str, grader: str | None) -> None:
    """Check (in place) the grader, grader_kwargs and gold of a row whose metadata is ``meta``.

    ``grader`` is the source's explicit param: it replaces the row's choice."""
    from thinkgym.verifiers.base import check_kwargs

    own = meta.get("grader")
    try:
        if grader is None and own is not None:
            grader = check_grader(own, f"{where}: metadata 'grader'")
        grader = check_grader(grader or DEFAULT_GRADER, f"{where}: grader")
    except ValueError as e:
        raise DatasetRowError(str(e)) from None
    meta["grader"] = grader
    kw = meta.get("grader_kwargs")
    if kw is None:
        meta.pop("grader_kwargs", None)
    elif not isinstance(kw, Mapping):
        raise DatasetRowError(f"{where}: metadata 'grader_kwargs' must be an object, got {type(kw).__name__} {show(kw, 60)}")
    else:
        kw = meta["grader_kwargs"] = dict(kw)
        bad = check_kwargs(grader, kw)
        if bad is not None:
            raise DatasetRowError(f"{where}: metadata 'grader_kwargs.{bad[0]}': {bad[1]}")
    why = _gold_problem(grader, a)
    if why:
        raise DatasetRowError(f"{where}: field {answer_field!r} is not a gold the {grader!r} grader can read: {why}")


def _row_to_item(
    row: Any,
    where: str,
    question_field: str,
    answer_field: str,
    metadata_fields: list[str] | None,
    grader: str | None = None,
) -> Item:
    if not isinstance(row, Mapping):
        raise DatasetRowError(f"{where}: expected an object with fields, got {type(row).__name__}")
    if question_field not in row:
        raise DatasetRowError(f"{where}: missing field {question_field!r} (fields: {sorted(row)})")
    q = row[question_field]
    if not isinstance(q, str) or not q.strip():
        raise DatasetRowError(f"{where}: field {question_field!r} must be a non-empty string, got {q!r}")
    if answer_field not in row:
        raise DatasetRowError(f"{where}: missing field {answer_field!r} (fields: {sorted(row)})")
    a = row[answer_field]
    if a is None:
        raise DatasetRowError(f"{where}: field {answer_field!r} is null")
    if isinstance(a, str) and not a.strip():
        # Like null: no completion can match a blank gold, so the row would only ever score 0.
        raise DatasetRowError(f"{where}: field {answer_field!r} is empty")
    if _has_non_finite(a):
        # No grader can match NaN or an infinity, and JSON has no spelling for them.
        raise DatasetRowError(f"{where}: field {answer_field!r} holds NaN or Infinity, got {a!r}")
    meta: dict[str, Any] = {}
    md = row.get("metadata")
    if isinstance(md, Mapping) and "metadata" not in (question_field, answer_field):
        meta.update(md)
    elif md is not None and "metadata" not in (question_field, answer_field, *(metadata_fields or ())):
        # Only an object can be merged; anything else would vanish (null holds nothing to lose).
        raise DatasetRowError(
            f"{where}: field 'metadata' must be an object, got {type(md).__name__} {show(md, 60)}"
        )
    if metadata_fields is None:
        # Keep every other field: loading a dataset must not silently lose columns.
        extra = [k for k in row if k not in (question_field, answer_field, "metadata")]
    else:
        missing = [k for k in metadata_fields if k not in row]
        if missing:
            raise DatasetRowError(f"{where}: missing metadata field(s) {missing} (fields: {sorted(row)})")
        extra = list(metadata_fields)
    for k in extra:
        if k in _GRADING_KEYS:
            raise DatasetRowError(
                f"{where}: column {k!r} would decide how this row is graded; a row sets its grader only "
                f"inside its 'metadata' object ({{\"metadata\": {{\"grader\": ..., \"grader_kwargs\": {{...}}}}}}) "
                f"and the task param grader= sets it for every row. Move it there, rename it, or leave it "
                f"out with metadata_fields=[...]"
            )
        if k in meta and meta[k] != row[k]:
            # Either value would silently replace the other.
            raise DatasetRowError(
                f"{where}: field {k!r} is both a field and a key of 'metadata', with different values "
                f"({show(row[k], 60)} vs {show(meta[k], 60)})"
            )
        meta[k] = row[k]
    for name, v in ((answer_field, a), *meta.items()):
        bad = _non_json_type(v)
        if bad:
            # Items are plain JSON data (rollout files, `sample-tasks --json`, grader workers).
            hint = "" if name == answer_field else "; leave it out with metadata_fields=[...]"
            raise DatasetRowError(f"{where}: field {name!r} holds a {bad}, which JSON cannot represent{hint}")
    _grading(meta, a, where, answer_field, grader)
    return {"question": q, "answer": a, "metadata": meta}


# Parsed rows, shared by every source built on the same unchanged file in this process: a
# learner or an eval builds an env (and so a source) per episode, and re-reading a 7,500-row
# JSONL file each time costs ~55 ms an episode (an HF dataset folder ~190 ms).
# key -> (file state before the read, read start in ns, result)
_ROWS: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], int, Any]] = OrderedDict()
_ROWS_LOCK = threading.Lock()
_ROWS_MAX = 8
# A file changed within this long before its read may change again without a new timestamp
# (coarse file-system clocks), so such an entry is never trusted ("racily clean", as in git).
_RACY_NS = 2_000_000_000


def _file_state(path: Path) -> tuple[Any, ...]:
    """(name, inode, size, mtime, ctime) of ``path`` and, for a folder, of everything under it.
    ctime changes on every write and on ``os.utime``, so a rewrite cannot hide behind an old mtime."""
    paths = [path]
    if path.is_dir():
        paths += sorted(path.rglob("*"))
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _cached_rows(key: tuple[Any, ...], path: Path, load: Callable[[], Any]) -> Any:
    """``load()``'s result for ``path`` as it is now: reused while the file (or folder) is
    unchanged, loaded again otherwise. ``key`` names what ``load`` makes of the file (its kind and
    field mapping). A load that raises caches nothing."""
    key = (os.path.abspath(path), *key)
    state = _file_state(path)
    with _ROWS_LOCK:
        hit = _ROWS.get(key)
        if hit is not None and hit[0] == state and max(max(s[3], s[4]) for s in state) < hit[1] - _RACY_NS:
            _ROWS.move_to_end(key)
            return hit[2]
    started = time.time_ns()
    result = load()
    with _ROWS_LOCK:
        _ROWS[key] = (state, started, result)
        _ROWS.move_to_end(key)
        if len(_ROWS) > _ROWS_MAX:
            _ROWS.popitem(last=False)
    return result


class _RowsSource(TaskSource):
    """Shared indexing over a list of validated items."""

    _items: list[Item]

    def _finish(self, items: list[Item], seed: int, size: int | None, grader: str | None, origin: str) -> None:
        if not items:
            raise DatasetRowError(f"{origin}: no rows")
        if size is not None and size > len(items):
            raise ValueError(f"{origin}: size {size} > number of rows {len(items)}")
        self._items = items
        self.grader = grader or DEFAULT_GRADER  # type: ignore[misc]  # instance override of the class default
        TaskSource.__init__(self, seed=seed, size=len(items) if size is None else size)
        self._graders = frozenset(it["metadata"]["grader"] for it in items[: self.size])

    def graders(self) -> frozenset[str]:
        return self._graders

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    def generate(self, i: int, rng: random.Random) -> Item:
        it = self._items[i]
        # A fresh copy each time: callers may mutate what they get.
        return copy.deepcopy(it)


@register_task("jsonl")
class JsonlSource(_RowsSource):
    """Items from a JSON Lines file, one object per line (blank lines skipped)."""

    description = "Rows of a JSONL file (params: path, question_field, answer_field, metadata_fields, grader)."

    def __init__(
        self,
        path: str | Path,
        question_field: str = "question",
        answer_field: str = "answer",
        metadata_fields: list[str] | None = None,
        grader: str | None = None,
        seed: int = 0,
        size: int | None = None,
    ) -> None:
        self.path = Path(path)
        metadata_fields = _field_names(question_field, answer_field, metadata_fields)
        if grader is not None:
            check_grader(grader, "jsonl task source: grader")
        if not self.path.is_file():
            raise FileNotFoundError(f"jsonl task source: no such file: {self.path}")
        fields = (question_field, answer_field, None if metadata_fields is None else tuple(metadata_fields), grader)
        items = _cached_rows(("jsonl", fields), self.path, lambda: [
            _row_to_item(row, where, question_field, answer_field, metadata_fields, grader)
            for where, row in iter_jsonl(self.path, DatasetRowError)
        ])
        self._finish(items, seed, size, grader, str(self.path))

    def __repr__(self) -> str:
        return f"JsonlSource({str(self.path)!r}, size={self.size})"


_SUFFIX = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def _split_files(path: Path) -> tuple[str, dict[str, list[str]]]:
    """The format and the data files of each split in folder ``path``.

    Splits follow the Hub's file naming (``train-00000-of-00001.parquet``, ``data/test.jsonl``,
    ...): reading every file as one split would put the test rows into the training data.
    """
    from datasets.data_files import DataFilesDict, get_data_patterns

    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix in _SUFFIX and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise FileNotFoundError(f"hf_dataset: {path} holds neither a saved dataset nor data files")
    kinds = sorted({_SUFFIX[p.suffix] for p in files})
    if len(kinds) > 1:
        # One builder reads one format: the files of the others would be dropped without a word.
        shown = ", ".join(f"{k} ({sum(_SUFFIX[p.suffix] == k for p in files)} files)" for k in kinds)
        raise ValueError(f"hf_dataset {path}: data files of several formats: {shown}; keep one format per folder")
    # Compared by real path: `datasets` hands back absolute paths, the caller's may be relative
    # and a Hub cache snapshot links its files to blobs.
    wanted = {os.path.realpath(p): p for p in files}
    base = os.path.abspath(path)
    splits: dict[str, list[str]] = {}
    for name, found in DataFilesDict.from_patterns(get_data_patterns(base), base_path=base).items():
        chosen = [f for f in found if os.path.realpath(f) in wanted]
        if chosen:
            splits[str(name)] = chosen
    left = sorted(set(wanted) - {os.path.realpath(f) for chosen in splits.values() for f in chosen})
    if left:
        # Some files are named after a split and these are not: they would be left out.
        shown = ", ".join(str(wanted[f]) for f in left[:3])
        raise ValueError(
            f"hf_dataset {path}: {len(left)} data file(s) belong to no split ({shown}); "
            f"name every file after its split (train, validation, test) or move them out"
        )
    for name, chosen in splits.items():
        dirs = sorted({os.path.relpath(os.path.dirname(f), base) for f in chosen})
        if len(dirs) > 1:
            # Likely several configs of one dataset (gsm8k's main/ and socratic/): never merge them.
            raise ValueError(
                f"hf_dataset {path}: files of split {name!r} lie in several folders {dirs}; "
                "pass the folder of the one you mean as path"
            )
    return kinds[0], splits


def _load_hf(path: Path, split: str | None) -> tuple[Iterable[Mapping[str, Any]], str]:
    import datasets  # heavy; only when an HF source is actually built

    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(path))
    else:
        if path.is_dir():
            kind, data_files = _split_files(path)
        elif path.is_file() and path.suffix in _SUFFIX:
            kind, data_files = _SUFFIX[path.suffix], {"train": [str(path)]}
        else:
            raise FileNotFoundError(f"hf_dataset: no such dataset directory or data file: {path}")
        ds = datasets.load_dataset(kind, data_files=data_files)
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise ValueError(f"hf_dataset {path}: several splits {sorted(ds)}; pass split=")
            split = next(iter(ds))
        if split not in ds:
            raise ValueError(f"hf_dataset {path}: no split {split!r}; splits: {sorted(ds)}")
        ds = ds[split]
    elif split is not None and split not in (ds.split or "", "train"):
        raise ValueError(f"hf_dataset {path}: a single dataset (split {ds.split}); cannot select split {split!r}")
    return ds, split or str(ds.split or "train")


@register_task("hf_dataset")
class HFDatasetSource(_RowsSource):
    """Items from a local Hugging Face dataset: a ``save_to_disk`` folder or json/csv/parquet files."""

    description = "Local Hugging Face dataset (load_from_disk folder or data files; params: path, split, field mapping)."

    def __init__(
        self,
        path: str | Path,
        split: str | None = None,
        question_field: str = "question",
        answer_field: str = "answer",
        metadata_fields: list[str] | None = None,
        grader: str | None = None,
        seed: int = 0,
        size: int | None = None,
    ) -> None:
        self.path = Path(path)
        metadata_fields = _field_names(question_field, answer_field, metadata_fields)
        if grader is not None:
            check_grader(grader, "hf_dataset task source: grader")

        def load() -> tuple[list[Item], str]:
            ds, split_name = _load_hf(self.path, split)
            return [
                _row_to_item(row, f"{self.path} [{split_name}] row {k}", question_field, answer_field, metadata_fields, grader)
                for k, row in enumerate(ds)
            ], split_name

        if not self.path.exists():
            raise FileNotFoundError(f"hf_dataset: no such dataset directory or data file: {self.path}")
        fields = (question_field, answer_field, None if metadata_fields is None else tuple(metadata_fields), grader)
        items, self.split = _cached_rows(("hf_dataset", split, fields), self.path, load)
        self._finish(items, seed, size, grader, f"{self.path} [{self.split}]")

    def __repr__(self) -> str:
        return f"HFDatasetSource({str(self.path)!r}, split={self.split!r}, size={self.size})"


class UnknownSourceError(ValueError):
    """A source spec that names no registered task, env id, file or folder."""


def open_source(spec: str, seed: int | None = None, params: dict[str, Any] | None = None, size: int | None = None,
                *, default_seed: int = 0) -> TaskSource:
    """A task source from a registered name, an env id, a ``.jsonl`` file, or a local HF dataset folder/file.

    An env id gives the source the env serves (:func:`~thinkgym.envs.registration.task_source_for_env`):
    its registered seed, size and task params, with ``params`` merged over those and ``seed`` /
    ``size`` replacing them when given. ``seed=None`` means the env's seed for an env id and
    ``default_seed`` for anything else.
    """
    from thinkgym.tasks import TASKS, make_task

    params = dict(params or {})
    taken = sorted({"seed", "size"} & set(params))
    if taken:
        # make_task would fail with "got multiple values for keyword argument".
        raise ValueError(f"{', '.join(taken)} cannot be a task param: they have their own arguments")
    if spec in TASKS:
        return make_task(spec, seed=default_seed if seed is None else seed, size=size, **params)
    path = Path(spec)
    if "/" in spec and not path.exists():
        # An env id: the task behind it, as the env serves it.
        from thinkgym.envs.registration import ENVS, task_source_for_env

        if spec in ENVS:
            return task_source_for_env(spec, seed=seed, size=size, params=params)
    seed = default_seed if seed is None else seed
    if path.suffix == ".jsonl" and path.is_file():
        return make_task("jsonl", seed=seed, size=size, path=str(path), **params)
    if path.exists():
        try:
            return make_task("hf_dataset", seed=seed, size=size, path=str(path), **params)
        except (TypeError, ValueError, KeyError, OSError):
            raise
        except Exception as e:  # datasets / pyarrow refusing the files (mixed schemas, corrupt parquet, ...)
            why = " ".join(str(e.__cause__ or e).split())
            raise ValueError(f"{spec}: cannot read it as an HF dataset: {why[:300]}") from None
    raise UnknownSourceError(
        f"{spec!r} is neither a registered task ({', '.join(TASKS.names())}), an env id, nor an existing file or folder"
    )
