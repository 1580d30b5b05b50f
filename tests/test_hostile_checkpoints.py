"""A checkpoint directory comes from outside: its config is data (no interpolation resolved) and the model
folders it names never run their own code."""

import json

import pytest
import yaml
from conftest import make_random_checkpoint

from vla.data import SchemaError
from vla.models import load_policy
from vla.models.pretrained import CustomCodeError


def test_an_interpolation_in_a_checkpoint_config_is_refused_and_nothing_is_resolved(tmp_path, monkeypatch):
    monkeypatch.setenv("VLA_TEST_SECRET", "hunter2")
    path = make_random_checkpoint(tmp_path / "ckpt")
    load_policy(path)  # the untouched checkpoint loads
    config = yaml.safe_load((tmp_path / "ckpt" / "config.yaml").read_text())
    for key, value in [("name", "${oc.env:VLA_TEST_SECRET}"), ("horizon", "${head.width}")]:
        bad = dict(config, **{key: value})
        (tmp_path / "ckpt" / "config.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(
            SchemaError, match=rf"interpolation in config.yaml at {key} .*does not resolve"
        ) as e:
            load_policy(path)
        assert "hunter2" not in str(e.value)
    nested = json.loads(json.dumps(config))
    nested["backbone"]["text_path"] = "/models/${oc.env:VLA_TEST_SECRET}"
    (tmp_path / "ckpt" / "config.yaml").write_text(yaml.safe_dump(nested))
    with pytest.raises(SchemaError, match="at backbone.text_path"):
        load_policy(path)


def evil_model_folder(root):
    """A transformers folder whose config asks for its own code (auto_map, a model type transformers lacks);
    the code, if ever imported, leaves a marker file."""
    from transformers import BertConfig, BertModel

    folder = root / "evil"
    BertModel(
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    auto_map = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModel": "evil.EvilModel",
        "AutoModelForImageTextToText": "evil.EvilModel",
        "AutoTokenizer": ["evil.EvilTokenizer", None],
        "AutoProcessor": "evil.EvilProcessor",
    }
    config |= {"model_type": "vla-evil", "auto_map": auto_map}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer_config.json", "processor_config.json"):
        (folder / name).write_text(json.dumps({"auto_map": auto_map}))
    marker = root / "code-ran"
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig as EvilConfig, BertModel as EvilModel\n"
        "from transformers import BertTokenizer as EvilTokenizer, ProcessorMixin as EvilProcessor\n"
    )
    return folder, marker


@pytest.mark.parametrize(
    "key, error, message",
    [
        ("text_path", CustomCodeError, r"backbone.text_path=.*needs its own Python code"),
        # SigLIP is loaded by its own class, which reads no auto_map: that folder's weights then do not fit
        ("vision_path", SchemaError, r"does not fit the tiny policy its config builds \(size mismatch"),
    ],
)
def test_a_checkpoint_naming_a_model_with_custom_code_fails_without_running_it(tmp_path, key, error, message):
    folder, marker = evil_model_folder(tmp_path)
    path = make_random_checkpoint(tmp_path / "ckpt")
    config = yaml.safe_load((tmp_path / "ckpt" / "config.yaml").read_text())
    config["backbone"][key] = str(folder)
    (tmp_path / "ckpt" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(error, match=message) as raised:
        load_policy(path)
    assert len(str(raised.value)) < 600  # one line, not a dump of every tensor
    assert not marker.exists()


def test_a_vlm_path_with_custom_code_fails_without_running_it(tmp_path):
    from vla.models.config import BackboneConfig
    from vla.models.vlm import VLMBackbone

    folder, marker = evil_model_folder(tmp_path)
    with pytest.raises(CustomCodeError, match="backbone.vlm_path=.*needs its own Python code"):
        VLMBackbone(BackboneConfig(kind="vlm", vlm_path=str(folder)), 16, ["top"])
    assert not marker.exists()
