"""Task sources, loaders, the contamination gate and the tasks CLI under unusual or hostile input."""

from __future__ import annotations

import datetime
import json
import sys

import pytest
from typer.testing import CliRunner

from thinkgym.tasks import DatasetRowError, HFDatasetSource, JsonlSource, make_task
from thinkgym.tasks.contamination import contamination_report, ngrams, normalize


# -- indices, seeds, sizes ------------------------------------------------------------------------


def test_numpy_integers_index_and_seed_a_source():
    np = pytest.importorskip("numpy")
    src = make_task("arithmetic", seed=3)
    assert src[np.int64(5)] == src[5]  # shuffled index arrays and samplers hand out numpy ints
    assert make_task("arithmetic", seed=np.int64(3))[5] == src[5]
    assert type(make_task("arithmetic", seed=np.int64(3)).seed) is int
    with pytest.raises(TypeError, match="index must be an int"):
        src[np.float64(5)]
    with pytest.raises(TypeError, match="index must be an int"):
        src[True]


def test_size_past_sys_maxsize_is_refused_when_built():
    # len() cannot return more, so such a source raised OverflowError on every lookup.
    with pytest.raises(ValueError, match="size must be <= "):
        make_task("arithmetic", size=sys.maxsize + 1)
    assert len(make_task("arithmetic", size=sys.maxsize)) == sys.maxsize


def test_out_of_range_negative_index_names_the_index_given():
    with pytest.raises(IndexError, match=r"index -4 out of range \(size 3\)"):
        make_task("arithmetic", size=3)[-4]


def test_seed_too_large_to_print_is_refused_when_built():
    with pytest.raises(ValueError, match="seed is too large"):
        make_task("arithmetic", seed=10**5000)


# -- knobs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("arithmetic", {"ops": 5}, "ops must be a non-empty string"),
        ("arithmetic", {"parens": "no"}, "parens must be true or false, got 'no'"),
        ("countdown", {"exactly_once": "false"}, "exactly_once must be true or false"),
        ("countdown", {"target": 10**5000}, "target .* is out of reach"),
        ("word_problems", {"templates": 5}, "templates must be a list of names"),
        ("word_problems", {"templates": []}, "templates must name at least one of"),
        ("word_problems", {"difficulty": None}, "difficulty must be an int"),
        ("latex_math", {"kinds": 5}, "kinds must be a list of names"),
        ("latex_math", {"max_value": 10**13}, "max_value must be <= 1000000000000"),
        ("latex_math", {"max_value": 10**5000}, "max_value must be <= .*too long to print"),
        ("format", {"puzzles": {"upper": 1}}, "puzzles must be a list of names"),
        ("code", {"templates": 5}, "templates must be a list of names"),
        ("code", {"templates": "stdio_words", "form": "function"}, "no code templates of form 'function'"),
    ],
)
def test_bad_knobs_fail_when_built_naming_the_knob(name, params, match):
    """Each used to be a bare TypeError ("'int' object is not iterable"), an item-time failure,
    or (for "false" and "no") silently taken as true."""
    with pytest.raises(ValueError, match=match):
        make_task(name, **params)


def test_one_knob_value_in_two_spellings_gives_the_same_items():
    # Params key every item: a tuple from Python and a list from a config (or another process
    # that read it as JSON) must not give two different datasets.
    pairs = [
        ("arithmetic", {"n_operands": (2, 4)}, {"n_operands": [2, 4]}),
        ("arithmetic", {"ops": ["+", "-"]}, {"ops": "+-"}),
        ("countdown", {"n_numbers": (3, 4), "target": (10, 99)}, {"n_numbers": [3, 4], "target": [10, 99]}),
    ]
    for name, a, b in pairs:
        assert [make_task(name, seed=2, **a)[i] for i in range(5)] == [make_task(name, seed=2, **b)[i] for i in range(5)]
    assert make_task("arithmetic", n_operands=(2, 4)).params["n_operands"] == [2, 4]


def test_every_reference_solution_grades_full_marks():
    from thinkgym.verifiers import grade

    configs = [
        ("arithmetic", {"ops": "+-*/", "n_operands": [2, 8], "max_value": 1000}),
        ("countdown", {"n_numbers": [2, 6], "max_number": 100, "target": [1, 1000]}),
        ("countdown", {"exactly_once": True}),
        ("word_problems", {"difficulty": [0, 5]}),
        ("latex_math", {"max_value": 200}),
        ("format", {}),
    ]
    for name, params in configs:
        src = make_task(name, seed=5, **params)
        for i in range(100):
            it = src[i]
            json.dumps(it, allow_nan=False)
            md = it["metadata"]
            g = grade(md["grader"], md["solution"], it["answer"], **md.get("grader_kwargs", {}))
            assert g.score == 1.0, (name, params, i, it, g)


# -- loaders --------------------------------------------------------------------------------------


def _rows(tag, n):
    return [{"question": f"{tag} question {i}?", "answer": str(i)} for i in range(n)]


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.mark.parametrize("layout", ["flat", "hub"])
def test_hf_folder_of_split_files_keeps_the_splits_apart(tmp_path, monkeypatch, layout):
    """train-*.parquet and test-*.parquet in one folder (or under data/, as a Hub snapshot has
    them) were read as one 'train' split, test rows included, or not found at all."""
    datasets = pytest.importorskip("datasets")
    base = tmp_path / "ds"
    where = base / "data" if layout == "hub" else base
    where.mkdir(parents=True)
    datasets.Dataset.from_list(_rows("train", 5)).to_parquet(str(where / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(_rows("test", 2)).to_parquet(str(where / "test-00000-of-00001.parquet"))
    (base / "README.md").write_text("# a dataset\n")
    with pytest.raises(ValueError, match=r"several splits \['test', 'train'\]"):
        HFDatasetSource(base)
    test = HFDatasetSource(base, split="test")
    assert test.split == "test" and [it["question"] for it in test] == ["test question 0?", "test question 1?"]
    assert len(HFDatasetSource(base, split="train")) == 5
    monkeypatch.chdir(tmp_path)  # a relative path names the same files
    assert [it["question"] for it in HFDatasetSource("ds", split="test")] == ["test question 0?", "test question 1?"]


def test_hf_folder_files_that_would_be_dropped_are_an_error(tmp_path):
    pytest.importorskip("datasets")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.csv").write_text("question,answer\nq?,1\n")
    _jsonl(mixed / "b.jsonl", _rows("b", 3))  # was silently left out: only the first format was read
    with pytest.raises(ValueError, match=r"several formats: csv \(1 files\), json \(1 files\)"):
        HFDatasetSource(mixed)
    stray = tmp_path / "stray"
    _jsonl(stray / "train.jsonl", _rows("train", 2))
    _jsonl(stray / "extra.jsonl", _rows("extra", 2))  # matches no split name
    with pytest.raises(ValueError, match=r"1 data file\(s\) belong to no split .*extra\.jsonl"):
        HFDatasetSource(stray)
    configs = tmp_path / "configs"
    _jsonl(configs / "main" / "train.jsonl", _rows("main", 2))
    _jsonl(configs / "socratic" / "train.jsonl", _rows("socratic", 2))
    with pytest.raises(ValueError, match=r"split 'train' lie in several folders \['main', 'socratic'\]"):
        HFDatasetSource(configs)
    assert len(HFDatasetSource(configs / "main")) == 2
    plain = tmp_path / "plain"  # no split names at all: every file is 'train', as before
    _jsonl(plain / "part1.jsonl", _rows("p1", 2))
    (plain / "part2.json").write_text(json.dumps(_rows("p2", 3)))
    assert len(HFDatasetSource(plain)) == 5


def test_hf_column_json_cannot_hold_is_named(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"question": "q?", "answer": "1", "when": datetime.datetime(2024, 1, 1)}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DatasetRowError, match=r"\[train\] row 0: field 'when' holds a datetime.*metadata_fields"):
        HFDatasetSource(tmp_path / "d")
    assert HFDatasetSource(tmp_path / "d", metadata_fields=[])[0]["answer"] == "1"


@pytest.mark.parametrize("answer", ["", "   "])
def test_jsonl_blank_answer_is_an_error(tmp_path, answer):
    # Like null: no completion can match it, so the row would only ever score 0.
    p = tmp_path / "d.jsonl"
    _jsonl(p, [{"question": "q?", "answer": "1"}, {"question": "q?", "answer": answer}])
    with pytest.raises(DatasetRowError, match=r"d\.jsonl:2: field 'answer' is empty"):
        JsonlSource(p)


def test_jsonl_field_mapping_is_checked(tmp_path):
    p = tmp_path / "d.jsonl"
    _jsonl(p, [{"problem": "q?", "solution": "1", "level": 2, "id": "a"}])
    # A string (as --param metadata_fields=level,id gives) is a comma-separated list, not letters.
    s = JsonlSource(p, question_field="problem", answer_field="solution", metadata_fields="level,id")
    assert s[0]["metadata"] == {"level": 2, "id": "a", "grader": "math", "source": "jsonl", "index": 0}
    with pytest.raises(TypeError, match="question_field must be a field name"):
        JsonlSource(p, question_field=5)
    with pytest.raises(TypeError, match="metadata_fields must be a list of field names"):
        JsonlSource(p, question_field="problem", answer_field="solution", metadata_fields=[1])


# -- contamination --------------------------------------------------------------------------------


def test_short_questions_that_differ_in_an_operator_are_not_contaminated():
    """Short texts are compared whole; without their operators "2+3" and "2*3" were one question,
    and 2-operand arithmetic from another seed looked 19% contaminated instead of 6%."""
    r = contamination_report(["What is 12 + 5?", "Solve $x^2 - 4x + 3 = 0$."],
                             ["What is 12 - 5?", "Solve $x^2 + 4x + 3 = 0$.", "what is 12+5", "**What** is 12 + 5?"])
    assert [c[:2] for c in r.contaminated] == [(2, 0), (3, 0)]
    assert ngrams("What is 2 × 3?") == ngrams("what is 2*3") != ngrams("What is 2 + 3?")
    assert ngrams("A well-known and/or fact") == {"a well known and or fact"}
    tr = [it["question"] for it in make_task("arithmetic", seed=0, size=3000, n_operands=2)]
    ev = [it["question"] for it in make_task("arithmetic", seed=1, size=300, n_operands=2)]
    r = contamination_report(tr, ev)
    assert all(ev[e] in tr for e, _, _ in r.contaminated)  # only true copies


def test_invisible_characters_and_thousands_separators_do_not_hide_a_copy():
    long = ("A farmer has 1,250 sheep and sells 300 of them at the market on Monday then buys "
            "forty more on Tuesday how many sheep does the farmer have now")
    copies = [
        long.replace("farmer", "far\u200bmer"),  # zero-width space
        long.replace("market", "mar\u00adket"),  # soft hyphen
        long.replace("1,250", "1250"),
        long.upper().replace("SHEEP", "SHEEP\ufeff"),
    ]
    r = contamination_report([long], copies)
    assert r.rate == 1.0, r.summary()
    assert normalize("STRASSE") == normalize("straße")
    assert contamination_report(["What is 1,000 + 1?"], ["what is 1000+1"]).rate == 1.0


def test_ngram_length_must_be_an_int():
    with pytest.raises(TypeError, match="n must be an int"):
        contamination_report(["a b c"], ["a b c"], n=2.5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        contamination_report([], [], n=0)


# -- CLI ------------------------------------------------------------------------------------------


def _invoke(*args):
    from thinkgym.cli import app

    return CliRunner().invoke(app, list(args))


def test_seed_or_size_as_a_param_is_a_one_line_error(tmp_path):
    p = tmp_path / "d.jsonl"
    _jsonl(p, _rows("q", 3))
    for spec, kv in ((str(p), "size=2"), ("arithmetic", "seed=3")):
        r = _invoke("sample-tasks", spec, "-p", kv)
        assert r.exit_code == 2 and "cannot be a --param" in r.output, r.output
        assert "multiple values" not in r.output and "Traceback" not in r.output


def test_param_values_json_refuses_stay_strings():
    from thinkgym.tasks.cli import parse_params

    deep, huge = "[" * 100_000, "9" * 5000
    assert parse_params([f"ops={deep}", f"max_value={huge}"]) == {"ops": deep, "max_value": huge}
    r = _invoke("sample-tasks", "arithmetic", "-p", f"max_value={huge}")
    assert r.exit_code == 2 and "max_value must be an int" in r.output


def test_json_output_of_an_item_json_cannot_hold_is_a_one_line_error(capsys):
    import typer

    from thinkgym.tasks.cli import json_line

    with pytest.raises(typer.Exit):
        json_line({"question": "q", "answer": "1", "metadata": {"when": datetime.date(2024, 1, 1)}}, "'x' item 0")
    err = capsys.readouterr().err
    assert err.startswith("error: 'x' item 0: metadata.when is not JSON data") and err.count("\n") == 1
