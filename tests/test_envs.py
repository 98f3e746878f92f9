"""The conda environments for --sdm conda must pin exactly what requirements.txt pins."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: '{line}' is not pinned with =="
            pins[name.lower()] = version
    return pins


def _env_pins(path: Path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                name, _, version = line.partition("==")
                pins[name.lower()] = version
    return pins


def test_every_env_pin_matches_requirements():
    required = _requirement_pins()
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs, "no conda environment files in envs/"
    for env in envs:
        pins = _env_pins(env)
        assert pins, f"{env.name}: no pip pins"
        for name, version in pins.items():
            assert name in required, f"{env.name}: {name} is not in requirements.txt"
            assert version == required[name], f"{env.name}: {name}=={version}, requirements.txt says {required[name]}"


def test_envs_use_python_311():
    for env in sorted((REPO / "envs").glob("*.yaml")):
        deps = yaml.safe_load(env.read_text())["dependencies"]
        assert "python=3.11" in deps, f"{env.name}: python=3.11 missing"


def test_torch_pins_agree_with_pyproject():
    required = _requirement_pins()
    pyproject = (REPO / "pyproject.toml").read_text()
    for name in ("torch", "torchvision"):
        m = re.search(rf'"{name}==([^"]+)"', pyproject)
        assert m, f"pyproject.toml does not pin {name}"
        assert m.group(1) == required[name]


def _rule_blocks(text: str):
    """(name, body) of every rule or checkpoint in a rules file."""
    parts = re.split(r"^(?:rule|checkpoint) (\w+):\n", text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def test_every_script_rule_names_an_existing_conda_env():
    rules = sorted((REPO / "workflow" / "rules").glob("*.smk"))
    assert rules
    checked = 0
    for smk in rules:
        for name, body in _rule_blocks(smk.read_text()):
            body = body.split("\nrule ")[0]
            if "script:" not in body:
                continue
            m = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
            assert m, f"{smk.name}: rule {name} runs a script but names no conda env"
            assert (smk.parent / m.group(1)).resolve().is_file(), f"{smk.name}: rule {name}: {m.group(1)} missing"
            checked += 1
    assert checked > 0
