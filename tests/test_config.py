import copy

import pytest
import yaml

from peekaboo import config as pcfg
from peekaboo import schema

from fixtures.items import good_record, write_jsonl


@pytest.fixture
def raw_config(tmp_path):
    """A minimal valid config (relative dataset path, as users write it) and its directory."""
    write_jsonl(tmp_path / "data" / "d.jsonl", [good_record("a")])
    # a model folder as a checkpoint has one (validation reads it: a source that cannot be read is an error)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "qwen3_vl"}')
    return {
        "datasets": {"mine": {"adapter": "jsonl", "options": {"path": "data/d.jsonl"}}},
        "models": {"m": {"source": "model"}},
    }


def error_of(cfg, base_dir) -> str:
    with pytest.raises(pcfg.ConfigError) as info:
        pcfg.validate(cfg, base_dir=base_dir)
    return str(info.value)


def test_valid_config_gets_defaults(raw_config, tmp_path):
    cfg = pcfg.validate(raw_config, base_dir=tmp_path)
    assert cfg["results"] == "results" and cfg["seed"] == 0
    assert cfg["masks"]["fills"] == ["gray"] and cfg["masks"]["control_attempts"] == 200
    assert cfg["datasets"]["mine"]["masks"] is True and cfg["datasets"]["mine"]["limit"] is None
    assert cfg["models"]["m"]["generation"]["max_new_tokens"] == 256
    assert "masks" not in raw_config  # the input is not modified
    assert cfg["datasets"]["mine"]["sample"] is None and cfg["collapse"]["endpoint_fraction"] == 0.25
    raw_config["datasets"]["mine"]["sample"] = {"n": 300}
    assert pcfg.validate(raw_config, base_dir=tmp_path)["datasets"]["mine"]["sample"] == {"n": 300, "seed": 0}


@pytest.mark.parametrize(
    "path,key",
    [
        ((), "sed"),
        (("datasets", "mine"), "limt"),
        (("datasets", "mine", "options"), None),  # adapter options are free-form: no error
        (("masks",), "blur_radiu"),
        (("models", "m"), "dtyp"),
    ],
)
def test_unknown_key_is_named(raw_config, tmp_path, path, key):
    cfg = copy.deepcopy(raw_config)
    target = cfg
    for p in path:
        target = target.setdefault(p, {})
    target[key or "anything"] = 1
    if key is None:
        pcfg.validate(cfg, base_dir=tmp_path)
        return
    message = error_of(cfg, tmp_path)
    assert f"unknown key {'.'.join(path + (key,))}" in message


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda c: c.update(seed="zero"), "seed: 'zero' is not of type 'integer'"),
        (lambda c: c["datasets"]["mine"].update(limit="3"), "datasets.mine.limit: '3' is not of type"),
        (lambda c: c["datasets"]["mine"].update(sample={"seed": 1}), "datasets.mine.sample: 'n' is a required property"),
        (lambda c: c["datasets"]["mine"].update(sample={"n": 0}), "datasets.mine.sample.n: 0 is less than the minimum"),
        (lambda c: c.update(masks={"fills": "gray"}), "masks.fills: 'gray' is not of type 'array'"),
        (lambda c: c.update(masks={"fills": ["grey"]}), "masks.fills[0]: 'grey' is not one of"),
        (lambda c: c["models"]["m"].update(batch_size=0), "models.m.batch_size: 0 is less than the minimum"),
        (lambda c: c.update(traces={"map_layers": "some"}), "traces.map_layers: 'some' is not valid here; expected one of 'all', 'mean' or a list of integers"),
        (lambda c: c["datasets"]["mine"].update(adapter="jsnl"), "datasets.mine.adapter: 'jsnl' is not one of"),
        (lambda c: c["models"]["m"].update(reference={"behaviour": "grounded"}), "models.m: give exactly one of 'source'"),
    ],
)
def test_wrong_type_or_value_is_named(raw_config, tmp_path, change, expected):
    cfg = copy.deepcopy(raw_config)
    change(cfg)
    assert expected in error_of(cfg, tmp_path)


def test_missing_dataset_path_is_named(raw_config, tmp_path):
    cfg = copy.deepcopy(raw_config)
    cfg["datasets"]["mine"]["options"]["path"] = "data/gone.jsonl"
    message = error_of(cfg, tmp_path)
    assert "datasets.mine.options.path: no such file data/gone.jsonl" in message
    assert str(tmp_path) in message  # says where it looked


def test_absent_dataset_path_option_is_named(raw_config, tmp_path):
    cfg = copy.deepcopy(raw_config)
    cfg["datasets"]["mine"]["options"] = {}
    assert "datasets.mine.options.path: required by adapter 'jsonl'" in error_of(cfg, tmp_path)


def test_missing_boxes_file_is_named(raw_config, tmp_path):
    cfg = copy.deepcopy(raw_config)
    cfg["datasets"]["mine"]["boxes"] = "boxes.jsonl"
    assert "datasets.mine.boxes: no such file" in error_of(cfg, tmp_path)


def test_every_problem_is_listed(raw_config, tmp_path):
    cfg = copy.deepcopy(raw_config)
    cfg["sed"] = 1
    cfg["seed"] = "x"
    message = error_of(cfg, tmp_path)
    assert "unknown key sed" in message and "seed: 'x'" in message


def test_paths_not_checked_when_asked(raw_config, tmp_path):
    cfg = copy.deepcopy(raw_config)
    cfg["datasets"]["mine"]["options"]["path"] = "gone.jsonl"
    pcfg.validate(cfg, base_dir=tmp_path, check_paths=False)


def test_load_resolves_paths_against_the_working_directory(raw_config, tmp_path, monkeypatch):
    # as in a Snakemake run: relative dataset paths are relative to where the run starts
    path = tmp_path / "configs" / "config.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(raw_config))
    monkeypatch.chdir(tmp_path)
    assert pcfg.load(path)["datasets"]["mine"]["options"]["path"] == "data/d.jsonl"
    monkeypatch.chdir(path.parent)
    with pytest.raises(pcfg.ConfigError, match="datasets.mine.options.path: no such file data/d.jsonl"):
        pcfg.load(path)
    assert pcfg.load(path, base_dir=tmp_path)["seed"] == 0


def test_load_rejects_a_non_mapping(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(pcfg.ConfigError, match="expected a mapping"):
        pcfg.load(path)


def test_embedded_default_config_is_valid(repo_dir):
    cfg = pcfg.load(repo_dir / "config.yaml", check_paths=False)
    assert cfg["datasets"] and cfg["models"]


def test_key_path_format():
    assert schema.key_path(["datasets", "mine", "regions", 0, "box"]) == "datasets.mine.regions[0].box"
    assert schema.key_path([]) == "<top level>"


def test_thinking_on_a_template_that_ignores_it_is_reported(raw_config, tmp_path):
    import json

    from peekaboo.models.tiny import build_processor

    folder = tmp_path / "model"
    raw_config["models"]["m"]["thinking"] = True
    # the real Qwen3-VL template reads enable_thinking (via the processor's own template): nothing to report
    build_processor("qwen3_vl").save_pretrained(folder)
    assert pcfg.notices(pcfg.validate(raw_config, base_dir=tmp_path), tmp_path) == []
    # a template that opens the thinking block whatever the switch says (as the Thinking checkpoints' do)
    for leftover in folder.glob("chat_template*"):
        leftover.unlink()
    (folder / "chat_template.jinja").write_text("{{ messages }}<|im_start|>assistant\n<think>\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    notes = pcfg.notices(pcfg.validate(raw_config, base_dir=tmp_path), tmp_path)
    assert len(notes) == 1 and notes[0].startswith("models.m.thinking: true, but the chat template of model does not")
    assert "opens a thinking block" in notes[0]
    raw_config["models"]["m"]["thinking"] = False
    assert pcfg.notices(pcfg.validate(raw_config, base_dir=tmp_path), tmp_path) == []
