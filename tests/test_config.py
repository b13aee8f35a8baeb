import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from thinkgym.config import ConfigError, load_config


@dataclass
class Cfg:
    lr: float = 1e-5
    steps: int = 10
    name: str = "x"
    tags: list[str] = field(default_factory=list)
    model: str | None = None

    def validate(self):
        if self.steps <= 0:
            raise ValueError("steps must be > 0")


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 3e-5\nsteps: 4\ntags: [a, b]\n")
    c = load_config(Cfg, p, {"steps": "7", "model": None})
    assert (c.lr, c.steps, c.tags, c.model) == (3e-5, 7, ["a", "b"], None)


@pytest.mark.parametrize(
    "text,match",
    [
        ("lr: 1\nstpes: 3\n", "unknown key.*'stpes' \\(did you mean 'steps'\\?\\)"),
        ("steps: many\n", "steps: expected an integer"),
        ("steps: 0\n", "steps must be > 0"),
        ("- 1\n- 2\n", "mapping"),
        ("lr: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(Cfg, p)
    assert str(p) in str(e.value)


def test_sft_config_rejects_nan_naming_file_and_key(tmp_path):
    # NaN passes `x <= 0`; the SFT config must still refuse it, naming where it came from.
    from thinkgym.sft_coldstart.train import SFTConfig

    p = tmp_path / "sft.yaml"
    p.write_text("tasks: [arithmetic]\nlearning_rate: .nan\n")
    with pytest.raises(ConfigError, match=r"sft\.yaml: learning_rate must be a finite number, got nan"):
        load_config(SFTConfig, p)


def test_parse_sets_values_are_yaml_and_errors_are_one_line():
    from thinkgym.config import ConfigError, parse_sets

    assert parse_sets(["lr=0.5", " envs = [a, b]", "name=x=y"]) == {"lr": 0.5, "envs": ["a", "b"], "name": "x=y"}
    for bad, msg in (("lr", "--set expects KEY=VALUE, got 'lr'"), ("=1", "--set expects KEY=VALUE"),
                     ("tasks=[a", "--set tasks: value '[a' is not valid YAML")):
        with pytest.raises(ConfigError, match=re.escape(msg)) as e:
            parse_sets([bad])
        assert "\n" not in str(e.value)


def test_sft_launcher_entry_reports_bad_overrides_without_a_traceback(capsys):
    from thinkgym.sft_coldstart.train import main

    cfg = str(Path(__file__).resolve().parents[1] / "examples" / "sft-tiny-cpu.yaml")
    for args in ([cfg, "tasks=[a"], [cfg, "learning_rate"], [cfg, "learning_rate=-1"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("text, match", [
    # yaml keeps the last of two equal keys silently: a second lr further down a file would win
    ("lr: 1e-4\nsteps: 3\nlr: 2e-4\n", r"c\.yaml: not valid YAML \(key 'lr' given twice \(lines 1 and 3\)"),
    ("tags: [a]\nmodel:\n  x: 1\n  x: 2\n", r"key 'x' given twice \(lines 3 and 4\)"),
    ("lr: [1\n", r"c\.yaml: not valid YAML \(expected ',' or '\]'.* at line 2, column 1\)$"),
])
def test_yaml_errors_are_one_line_and_duplicate_keys_are_refused(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(Cfg, p)
    assert "\n" not in str(e.value)


def test_yaml_merge_keys_may_be_overridden_and_non_utf8_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("<<: {steps: 5, lr: 0.1}\nlr: 0.2\n")  # a key a merge brings is no duplicate
    c = load_config(Cfg, p)
    assert (c.steps, c.lr) == (5, 0.2)
    p.write_bytes(b"name: caf\xe9\n")  # latin-1
    with pytest.raises(ConfigError, match=r"c\.yaml: not UTF-8 text \(byte 9"):
        load_config(Cfg, p)
