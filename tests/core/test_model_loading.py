import pytest
import torch

from qvgen_export.models.wan import load_diffusers_transformer, model_config_dict


@pytest.mark.parametrize("layout", ["model", "pipeline"])
def test_load_real_weights_from_local_diffusers_folder(tmp_path, float_model, layout):
    folder = tmp_path / "wan"
    target = folder / "transformer" if layout == "pipeline" else folder
    float_model.save_pretrained(target, safe_serialization=True)
    assert not list(target.glob("*.bin")), "weights must be safetensors"
    loaded = load_diffusers_transformer(folder)
    assert model_config_dict(loaded) == model_config_dict(float_model)
    for (k, a), (_, b) in zip(float_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no diffusers config.json"):
        load_diffusers_transformer(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path, float_model):
    float_model.save_pretrained(tmp_path, safe_serialization=True)
    cfg = (tmp_path / "config.json").read_text().replace('"num_layers": 2', '"num_layers": 3')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(ValueError, match="do not match config.json"):
        load_diffusers_transformer(tmp_path)
