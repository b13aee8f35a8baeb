"""JSONL and Hugging Face dataset loaders: field mapping, and bad rows named by file/line/field."""

from __future__ import annotations

import json

import pytest

from thinkgym.tasks import DatasetRowError, HFDatasetSource, JsonlSource, make_task


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_field_mapping_and_metadata(tmp_path):
    p = _write(tmp_path / "d.jsonl", [
        {"problem": "1+1?", "solution": "2", "level": 3, "id": "a"},
        "",
        {"problem": "2+2?", "solution": 4, "level": 1, "id": "b", "metadata": {"grader": "format"}},
    ])
    s = JsonlSource(p, question_field="problem", answer_field="solution")
    assert len(s) == 2
    assert s[0] == {"question": "1+1?", "answer": "2",
                    "metadata": {"level": 3, "id": "a", "grader": "math", "source": "jsonl", "index": 0}}
    assert s[1]["answer"] == 4 and s[1]["metadata"]["grader"] == "format"  # row-level grader wins
    only = JsonlSource(p, question_field="problem", answer_field="solution", metadata_fields=["id"], grader="format")
    assert only[0]["metadata"] == {"id": "a", "grader": "format", "source": "jsonl", "index": 0}
    # Registered under "jsonl" with a path param; items are copies.
    t = make_task("jsonl", path=str(p), question_field="problem", answer_field="solution", size=1)
    assert len(t) == 1 and list(t)[0]["question"] == "1+1?"
    t[0]["metadata"]["level"] = 99
    assert t[0]["metadata"]["level"] == 3


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"question": "q", "answer": "a"}, "{not json"], r"d\.jsonl:2: invalid JSON"),
        ([{"question": "q", "answer": "a"}, {}, {"answer": "x"}], r"d\.jsonl:2: missing field 'question'"),
        ([{"question": "q"}], r"d\.jsonl:1: missing field 'answer'"),
        ([{"question": "", "answer": "1"}], r"d\.jsonl:1: field 'question' must be a non-empty string"),
        ([{"question": 5, "answer": "1"}], r"d\.jsonl:1: field 'question' must be a non-empty string"),
        ([{"question": "q", "answer": None}], r"d\.jsonl:1: field 'answer' is null"),
        (["[1, 2]"], r"d\.jsonl:1: expected an object"),
        ([], "no rows"),
    ],
)
def test_jsonl_bad_rows_name_file_line_field(tmp_path, rows, match):
    p = _write(tmp_path / "d.jsonl", rows)
    with pytest.raises(DatasetRowError, match=match):
        JsonlSource(p)


def test_jsonl_missing_metadata_field_and_file(tmp_path):
    p = _write(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DatasetRowError, match=r"d\.jsonl:1: missing metadata field\(s\) \['level'\]"):
        JsonlSource(p, metadata_fields=["level"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        JsonlSource(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="size 5 > number of rows 1"):
        JsonlSource(p, size=5)


def test_hf_dataset_from_disk_and_files(tmp_path):
    import datasets

    rows = [{"prompt": f"What is {i}+{i}?", "target": str(2 * i), "topic": "add"} for i in range(5)]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])})
    dd.save_to_disk(str(tmp_path / "saved"))
    s = HFDatasetSource(tmp_path / "saved", split="test", question_field="prompt", answer_field="target")
    assert len(s) == 2 and s[1]["question"] == "What is 1+1?" and s[1]["answer"] == "2"
    assert s[1]["metadata"]["topic"] == "add"
    with pytest.raises(ValueError, match="several splits"):
        HFDatasetSource(tmp_path / "saved", question_field="prompt", answer_field="target")
    with pytest.raises(ValueError, match="no split 'dev'"):
        HFDatasetSource(tmp_path / "saved", split="dev")
    # Bad rows name the dataset, split, row and field.
    with pytest.raises(DatasetRowError, match=r"saved \[train\] row 0: missing field 'question'"):
        HFDatasetSource(tmp_path / "saved", split="train")
    # A single Dataset folder, and plain data files, via the registered name.
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert len(make_task("hf_dataset", path=str(tmp_path / "single"), question_field="prompt", answer_field="target")) == 5
    (tmp_path / "files").mkdir()
    _write(tmp_path / "files" / "part.jsonl", rows)
    f = make_task("hf_dataset", path=str(tmp_path / "files"), question_field="prompt", answer_field="target")
    assert [f[i]["answer"] for i in range(5)] == ["0", "2", "4", "6", "8"]
    with pytest.raises(FileNotFoundError):
        HFDatasetSource(tmp_path / "missing")


def _count_calls(monkeypatch, name):
    from thinkgym.tasks import loaders

    calls = []
    real = getattr(loaders, name)

    def spy(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(loaders, name, spy)
    return calls


def test_jsonl_rows_are_read_once_per_file_version(tmp_path, monkeypatch):
    # A learner builds an env, so a source, per episode: the file must not be parsed each time.
    from thinkgym.tasks import loaders

    monkeypatch.setattr(loaders, "_RACY_NS", 0)  # ctime is "now" after any write; trust it here
    reads = _count_calls(monkeypatch, "iter_jsonl")
    p = _write(tmp_path / "d.jsonl", [{"question": f"q{i}?", "answer": str(i)} for i in range(3)])
    srcs = [make_task("jsonl", path=str(p)) for _ in range(5)]
    assert len(reads) == 1 and [s[2]["answer"] for s in srcs] == ["2"] * 5
    srcs[0][2]["metadata"]["x"] = 1  # items are copies: an edit reaches neither the cache nor others
    assert "x" not in make_task("jsonl", path=str(p))[2]["metadata"] and len(reads) == 1
    # Other field mappings are other entries; a changed file is read again.
    make_task("jsonl", path=str(p), metadata_fields=[])
    assert len(reads) == 2
    _write(p, [{"question": "new?", "answer": "7"}])
    assert make_task("jsonl", path=str(p))[0]["question"] == "new?" and len(reads) == 3
    # A bad file caches nothing: fixing it is seen at once.
    _write(p, ["{oops"])
    with pytest.raises(DatasetRowError):
        make_task("jsonl", path=str(p))
    _write(p, [{"question": "fixed?", "answer": "1"}])
    assert make_task("jsonl", path=str(p))[0]["question"] == "fixed?"


def test_jsonl_rewrite_with_same_size_and_mtime_is_not_served_stale(tmp_path):
    # Same length, same inode, mtime put back: only ctime (and the racy rule) can tell.
    import os

    p = _write(tmp_path / "d.jsonl", [{"question": "aaa?", "answer": "1"}])
    st = os.stat(p)
    assert make_task("jsonl", path=str(p))[0]["question"] == "aaa?"
    with open(p, "r+b") as f:
        f.write(b'{"question": "bbb?"')
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(p).st_size == st.st_size and os.stat(p).st_ino == st.st_ino
    assert make_task("jsonl", path=str(p))[0]["question"] == "bbb?"


def test_settled_file_is_trusted_and_hf_dataset_loads_once(tmp_path, monkeypatch):
    import time

    import datasets

    from thinkgym.tasks import loaders

    monkeypatch.setattr(loaders, "_RACY_NS", 200_000_000)
    reads = _count_calls(monkeypatch, "iter_jsonl")
    p = _write(tmp_path / "d.jsonl", [{"question": "q?", "answer": "1"}])
    for _ in range(2):  # read right after a write: racy, so read again
        make_task("jsonl", path=str(p))
    assert len(reads) == 2
    time.sleep(0.3)  # past the racy window: the next read is trusted from then on
    for _ in range(3):
        make_task("jsonl", path=str(p))
    assert len(reads) == 3

    loads = _count_calls(monkeypatch, "_load_hf")
    rows = [{"prompt": f"What is {i}+{i}?", "target": str(2 * i)} for i in range(4)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    time.sleep(0.3)
    kw = dict(path=str(tmp_path / "saved"), question_field="prompt", answer_field="target")
    assert [make_task("hf_dataset", **kw)[3]["answer"] for _ in range(4)] == ["6"] * 4
    assert len(loads) == 1
    # A new file in the folder is a new version of the dataset.
    datasets.Dataset.from_list(rows[:2]).save_to_disk(str(tmp_path / "saved"))
    assert len(make_task("hf_dataset", **kw)) == 2 and len(loads) == 2


def test_change_is_seen_when_the_clock_runs_ahead_of_the_file_system(tmp_path, monkeypatch):
    # A clock ahead of the file system's (a network file system, a clock stepped back later)
    # makes every timestamp look settled, so the racy rule trusts the entry: the recorded file
    # state must still catch a rewrite.
    import time

    from thinkgym.tasks import loaders

    ahead = time.time_ns() + 3_600 * 10**9
    monkeypatch.setattr(loaders.time, "time_ns", lambda: ahead)
    reads = _count_calls(monkeypatch, "iter_jsonl")
    p = _write(tmp_path / "d.jsonl", [{"question": "old?", "answer": "1"}])
    for _ in range(2):
        assert make_task("jsonl", path=str(p))[0]["question"] == "old?"
    assert len(reads) == 1  # trusted: the file looks an hour old
    _write(p, [{"question": "newer?", "answer": "2"}])
    assert make_task("jsonl", path=str(p))[0]["question"] == "newer?" and len(reads) == 2


@pytest.mark.parametrize("metadata", ["notadict", [1, 2], 3, True])
def test_jsonl_metadata_that_is_not_an_object_is_an_error(tmp_path, metadata):
    # Only an object can be merged into an item's metadata; anything else would vanish.
    p = _write(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}, {"question": "q", "answer": "a", "metadata": metadata}])
    with pytest.raises(DatasetRowError, match=r"d\.jsonl:2: field 'metadata' must be an object, got "):
        JsonlSource(p)


def test_jsonl_metadata_null_or_listed_is_kept_as_is(tmp_path):
    p = _write(tmp_path / "d.jsonl", [{"question": "q", "answer": "a", "metadata": None}])
    assert JsonlSource(p)[0]["metadata"] == {"grader": "math", "source": "jsonl", "index": 0}
    p = _write(tmp_path / "e.jsonl", [{"question": "q", "answer": "a", "metadata": "a note"}])
    assert JsonlSource(p, metadata_fields=["metadata"])[0]["metadata"]["metadata"] == "a note"


def test_jsonl_field_clashing_with_a_metadata_key_is_an_error(tmp_path):
    p = _write(tmp_path / "d.jsonl", [{"question": "q", "answer": "a", "level": 2, "metadata": {"level": 5}}])
    with pytest.raises(DatasetRowError, match=r"d\.jsonl:1: field 'level' is both a field and a key of 'metadata'"):
        JsonlSource(p)
    p = _write(tmp_path / "e.jsonl", [{"question": "q", "answer": "a", "level": 2, "metadata": {"level": 2}}])
    assert JsonlSource(p)[0]["metadata"]["level"] == 2  # the same value twice loses nothing


@pytest.mark.parametrize("answer", ["NaN", "Infinity", "-Infinity", '{"numbers": [1, NaN]}'])
def test_jsonl_non_finite_answer_is_an_error(tmp_path, answer):
    p = _write(tmp_path / "d.jsonl", ['{"question": "q", "answer": 1}', '{"question": "q", "answer": %s}' % answer])
    # JSON has no NaN or Infinity; Python's json would read them (a NaN gold never equals an answer).
    with pytest.raises(DatasetRowError, match=r"d\.jsonl:2: invalid JSON \(-?(NaN|Infinity) is not a JSON value"):
        JsonlSource(p)


def test_jsonl_byte_order_mark_is_read_and_duplicate_keys_are_refused(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"question": "q1", "answer": "1"}\n{"question": "q2", "answer": "2"}\n')
    src = JsonlSource(p)
    assert [src[i]["question"] for i in range(len(src))] == ["q1", "q2"]
    # json keeps the last of two equal keys: a second "answer" would silently replace the gold
    p.write_text('{"question": "q", "answer": "5"}\n{"question": "q", "answer": "5", "answer": "6"}\n')
    with pytest.raises(DatasetRowError, match=r"bom\.jsonl:2: invalid JSON \(key 'answer' appears twice in one object\)"):
        JsonlSource(p)
