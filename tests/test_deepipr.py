"""DeepIPR baseline layers keep their own promises, and `compare` runs end to end."""

import json

import pytest
import torch
import torch.nn.functional as F

from passportnorm import passport_mode, protected_layers, sign_loss, signature_detection, strip, zoo
from passportnorm.baselines import DeepIPRBranch, protect_deepipr, release_deepipr
from passportnorm.baselines.compare import CompareOptions, run_compare
from passportnorm.cli import main
from passportnorm.errors import ConfigError
from passportnorm.key import OwnerKey, attach_key, extract_key
from passportnorm.verify import VerdictRule, verify
from models import PlainCNN


def _model():
    torch.manual_seed(0)
    return zoo.build("small_cnn", in_channels=1, num_classes=10, width=0.5)


def _train(model, steps=150, seed=1):
    """Passport steps only (with the sign loss) on random data: the signature must embed."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with passport_mode(model):
        for _ in range(steps):
            x, y = torch.randn(8, 1, 12, 12, generator=gen), torch.randint(0, 10, (8,), generator=gen)
            loss = F.cross_entropy(model(x), y) + sign_loss(model)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.mark.parametrize("scheme", ["v1", "v2"])
def test_deepipr_embeds_its_signature(scheme):
    model = protect_deepipr(_model(), torch.randn(4, 1, 12, 12), scheme=scheme, signature="ok", signature_mode="text", seed=0)
    layers = protected_layers(model)
    assert layers and all(isinstance(layer, DeepIPRBranch) and layer.scheme == scheme for layer in layers.values())
    before = signature_detection(model).rate
    report = signature_detection(_train(model))
    assert before < 0.8 and report.rate == 1.0 and report.message == "ok"


def test_v1_release_is_not_the_plain_architecture():
    original = _model()
    model = protect_deepipr(original, torch.randn(4, 1, 12, 12), scheme="v1", seed=0)
    released = release_deepipr(model)
    norms = [m for m in released.modules() if isinstance(m, DeepIPRBranch)]
    assert len(norms) == 3
    plain_keys, released_keys = set(original.state_dict()), set(released.state_dict())
    # the norms lose their affine parameters and the model now carries its passports
    assert "features.5.weight" in plain_keys and not any(k.endswith("norm.weight") for k in released_keys)
    assert any(k.endswith("passport_gamma") for k in released_keys)
    # no passport-free branch: the forward is the passport forward, with or without passport_mode
    x = torch.randn(3, 1, 12, 12)
    with passport_mode(released, enabled=False):
        free = released(x)
    with passport_mode(released):
        assert torch.equal(free, released(x))
    assert sum(p.numel() for p in released.parameters()) < sum(p.numel() for p in original.parameters())


def test_v2_releases_the_plain_architecture_but_shares_its_statistics():
    original = _model()
    x = torch.randn(6, 1, 12, 12)
    model = protect_deepipr(original, x[:4], scheme="v2", seed=0)
    original.eval(), model.eval()
    assert torch.equal(original(x), model(x))  # the public branch is the original norm, untouched
    released = release_deepipr(model)
    assert [type(m) for m in released.modules()] == [type(m) for m in original.modules()]
    assert list(released.state_dict()) == list(original.state_dict())
    # the private branch's training forward moves the RELEASED statistics (pan keeps separate ones)
    norm = model.get_submodule("features.5")
    before = norm.running_mean.clone()
    model.train()
    with passport_mode(model):
        model(x)
    assert not torch.equal(before, norm.running_mean)


def test_deepipr_v2_key_round_trip_and_verify(tmp_path):
    x = torch.randn(4, 1, 12, 12)
    model = _train(protect_deepipr(PlainCNN(), x, scheme="v2", signature="k", signature_mode="text", seed=0))
    key = extract_key(model)
    assert {layer.branch for layer in key.layers} == {"deepipr-v2"}
    key.save(tmp_path / "key")
    loaded = OwnerKey.load(tmp_path / "key")
    released = strip(model)
    attached = attach_key(released, loaded)
    assert all(isinstance(layer, DeepIPRBranch) and layer.scheme == "v2" for layer in protected_layers(attached).values())
    report = verify(released, loaded, rule=VerdictRule(allow_text_signatures=True))
    assert report.signature_detection == 1.0 and report.decoded_text == "k" and report.verified


def test_placements_and_schemes_are_checked():
    with pytest.raises(ConfigError, match="placement 'deepipr' is defined for alexnet, resnet18, not 'small_cnn'"):
        CompareOptions(arch="small_cnn", placement="deepipr").validate()
    with pytest.raises(ConfigError, match="unknown scheme 'deepipr-v3'"):
        CompareOptions(schemes=("plain", "deepipr-v3")).validate()
    from passportnorm.baselines.compare import PLACEMENTS

    model = zoo.build("resnet18", in_channels=1, num_classes=10, width=0.125)
    protected = protect_deepipr(model, torch.randn(2, 1, 28, 28), include=PLACEMENTS["deepipr"]["resnet18"], seed=0)
    assert protected_layers(protected) and all(path.startswith("layer4.") for path in protected_layers(protected))


def test_compare_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--dataset", "digits", "--arch", "small_cnn", "--width", "1.0", "--seeds", "1", "--epochs", "1",
            "--forge-epochs", "1", "--out", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    for scheme in ("plain", "deepipr-v1", "deepipr-v2", "pan"):
        assert f"| {scheme} |" in table
        assert (out / f"{scheme}-seed0" / "result.json").is_file()
    summary = json.loads((out / "compare.json").read_text())
    runs = {r["scheme"]: r for r in summary["runs"]}
    assert runs["deepipr-v1"]["released_architecture_is_plain"] is False
    assert runs["pan"]["released_architecture_is_plain"] and runs["deepipr-v2"]["released_architecture_is_plain"]
    assert runs["pan"]["signature_detection"] > 0.9 and 0 <= runs["pan"]["forged_accuracy"] <= 1
    # a rerun finds every run finished and only rebuilds the table
    summary_again = run_compare(CompareOptions(dataset="digits", arch="small_cnn", width=1.0, seeds=(0,), epochs=1,
                                               forge_epochs=1, out=str(out)))
    assert "finished earlier" in capsys.readouterr().out and summary_again["table"] == summary["table"]


def test_compare_reads_cifar_from_a_folder_with_the_papers_placement(tmp_path):
    from test_data_local import _write_cifar10_binary

    _write_cifar10_binary(tmp_path / "cifar", per_batch=8)
    summary = run_compare(CompareOptions(
        dataset="cifar10", data_dir=str(tmp_path / "cifar"), arch="alexnet", width=0.125, schemes=("plain", "deepipr-v2", "pan"),
        seeds=(0,), epochs=1, batch_size=16, placement="deepipr", forge_epochs=1, signature="(c)", out=str(tmp_path / "out"),
    ))
    runs = {r["scheme"]: r for r in summary["runs"]}
    assert set(runs) == {"plain", "deepipr-v2", "pan"}
    assert runs["pan"]["signature_bits"] == runs["deepipr-v2"]["signature_bits"] == sum(round(c * 0.125) for c in (384, 256, 256))
