"""Hugging Face transformers models by type (``--arch hf:TYPE``): every norm paired, the promises,
bits that train and travel in the key, GPT-2's transposed Conv1D as a consumer, and bad names."""

import importlib.util
import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.errors import ConfigError
from passportnorm.pairing import is_norm_layer
from passportnorm.protect import protected_layers
from sign_training import train_signature

pytestmark = pytest.mark.skipif(
    not importlib.util.find_spec("transformers"),
    reason="the hf extra is not installed: pip install 'passportnorm[hf]'",
)


def _model_and_input(arch):
    from passportnorm.zoo.hf import token_input

    model = zoo.build(arch, in_channels=1, num_classes=10, image_size=28).eval()
    text = zoo.model_task(arch) == "text"
    return model, token_input() if text else torch.randn(2, 1, 28, 28)


def _norms(model):
    return {path for path, m in model.named_modules() if m is not model and is_norm_layer(m)}


def _protect(model, x, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pn.PassportWarning)
        return pn.protect(model, x, seed=seed)


@pytest.mark.parametrize("arch", ["hf:llama", "hf:gpt2", "hf:bert", "hf:vit", "hf:gemma", "hf:olmo2"])
def test_every_norm_is_protected_and_the_promises_hold(arch):
    model, x = _model_and_input(arch)
    with torch.no_grad():
        reference = model(x)
    protected = _protect(model, x)
    assert set(protected_layers(protected)) == _norms(model) != set()
    with torch.no_grad():
        assert torch.equal(protected(x), reference)  # promise 1
        released = pn.strip(protected)
        assert torch.equal(released(x), reference)  # promise 2
    assert list(released.state_dict()) == list(model.state_dict())
    assert [type(m) for m in released.modules()] == [type(m) for m in model.modules()]
    for path in protected_layers(protected):  # promise 8: names and attributes read as before
        assert torch.equal(protected.get_submodule(path).weight, model.get_submodule(path).weight)


def test_a_llama_decoder_pairs_each_rmsnorm_with_the_projection_that_reads_it():
    model, x = _model_and_input("hf:llama")
    links = {p.norm: (p.producer, p.role) for p in pn.find_pairs(model, x).pairs}
    assert links["hf.model.layers.0.input_layernorm"] == ("hf.model.layers.0.self_attn.q_proj", "consumer")
    assert links["hf.model.layers.1.post_attention_layernorm"] == ("hf.model.layers.1.mlp.gate_proj", "consumer")
    assert links["hf.model.norm"] == ("hf.lm_head", "consumer")
    kinds = {type(model.get_submodule(path)).__name__ for path in links}
    assert kinds == {"LlamaRMSNorm"}


@pytest.mark.parametrize("arch", ["hf:llama", "hf:gpt2"])
def test_bits_train_into_the_consumers_and_come_back_through_the_key(arch, tmp_path):
    from passportnorm.key import OwnerKey, attach_key, extract_key

    model, x = _model_and_input(arch)
    protected = _protect(model, x, seed=4)
    train_signature(protected, x, 150)
    extract_key(protected).save(tmp_path / "key")
    released = pn.strip(protected)
    attached = attach_key(released, OwnerKey.load(tmp_path / "key"))
    bits = [float((b.extracted_bits() == b.signature).float().mean()) for b in protected_layers(attached).values()]
    assert len(bits) == 5 and set(bits) == {1.0}


def test_gpt2s_conv1d_is_read_as_the_linear_it_is():
    from transformers.pytorch_utils import Conv1D

    from passportnorm.norm import consumer_outputs, consumer_responses, lever_weight

    layer = Conv1D(12, 8)  # 8 inputs, 12 outputs, weight stored (8, 12)
    x = torch.randn(3, 8)
    assert lever_weight(layer).shape == (12, 8)
    assert torch.allclose(consumer_outputs(layer, x), layer(x) - layer.bias)
    passports = torch.randn(2, 5, 12)
    expected = (passports @ layer.weight.t()).mean(dim=1)
    assert torch.allclose(consumer_responses(layer, lever_weight(layer), passports, 8), expected)
    stored = layer.weight.detach().clone()
    with torch.no_grad():
        lever_weight(layer)[:, 3].neg_()  # channel 3's column: a view of the stored weight's row 3
    assert torch.equal(layer.weight[3], -stored[3]) and torch.equal(layer.weight[4], stored[4])
    assert torch.allclose(consumer_responses(layer, lever_weight(layer), passports, 8)[:, 3], -expected[:, 3])


def test_unknown_or_unbuildable_types_are_refused_by_name():
    with pytest.raises(ConfigError, match="no model type 'nope'"):
        zoo.build("hf:nope")
    with pytest.raises(ConfigError, match="hf:swin: the small config does not build"):
        zoo.build("hf:swin")


def test_a_text_model_is_refused_on_image_data():
    from passportnorm.pipeline import RunOptions, resolve_task

    with pytest.raises(ConfigError, match="'hf:llama' reads text inputs but 'mnist5k' holds image data"):
        resolve_task(RunOptions(arch="hf:llama", dataset="mnist5k"))


def test_inspect_names_every_norm_of_a_decoder(capsys):
    from passportnorm.cli import main

    assert main(["inspect", "--arch", "hf:gpt2"]) == 0
    out = capsys.readouterr().out
    assert "for token inputs (16,)" in out and "5 protectable norm layers" in out
    assert "hf.transformer.h.0.ln_1 (LayerNorm, 64 ch) -> hf.transformer.h.0.attn.c_attn (Conv1D, as it is)" in out


def test_a_transformers_causal_lm_reads_pydocs_like_the_zoo_gpt():
    """Scores along dim 1, (batch, vocabulary, tokens): the layout training and accuracy take."""
    from torch.utils.data import TensorDataset

    from passportnorm.data.registry import load_dataset
    from passportnorm.evaluation import accuracy, perplexity
    from passportnorm.pipeline import RunOptions, resolve_task

    data = load_dataset("pydocs")
    inputs, labels = (t[:8] for t in data.test.tensors)
    model = zoo.build("hf:llama", in_channels=64, num_classes=256).eval()
    assert model(inputs).shape == (8, 256, 64)
    assert 0.0 <= accuracy(model, TensorDataset(inputs, labels)) <= 1.0
    assert 100 < perplexity(model, TensorDataset(inputs, labels)) < 1000  # about 256 untrained
    assert resolve_task(RunOptions(arch="hf:llama", dataset="pydocs")).trigger == "prompts"
