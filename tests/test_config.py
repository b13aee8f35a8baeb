from dataclasses import dataclass, field

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
