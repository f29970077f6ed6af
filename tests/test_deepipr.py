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


def _one_layer(scheme, norm):
    """conv(1 -> 1, 3x3, padding 1) -> norm with a DeepIPR branch; weights and passports all ones."""
    from passportnorm.attach import attach_branch

    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.fill_(5.0)  # left out of the passport response (bias-free)
    ones = torch.ones(1, 1, 3, 3)
    branch = DeepIPRBranch(norm, conv, ones, -ones, torch.ones(1), scheme=scheme, producer_path="conv")
    attach_branch(norm, branch)
    return conv, norm, branch


@pytest.mark.parametrize("scheme", ["v1", "v2"])
@pytest.mark.parametrize("kind", ["bn", "gn"])
def test_scale_and_bias_are_the_producers_mean_response_to_each_passport(scheme, kind):
    """By hand: a 3x3 all-ones filter over a 3x3 all-ones passport with padding 1 sums 4 ones at the
    corners, 6 at the edges and 9 in the centre: mean (4*4 + 4*6 + 9) / 9 = 49/9; the beta passport
    (all -1) gives -49/9. No MLP, no bias: these are the norm's scale and shift."""
    norm = torch.nn.BatchNorm2d(1) if kind == "bn" else torch.nn.GroupNorm(1, 1)
    _, norm, branch = _one_layer(scheme, norm)
    substitutes = branch.substitutes()
    assert torch.allclose(substitutes["weight"], torch.tensor([49 / 9]))
    assert torch.allclose(substitutes["bias"], torch.tensor([-49 / 9]))
    x = torch.randn(4, 1, 5, 5)
    norm.eval()
    normalised = (
        F.batch_norm(x, norm.running_mean, norm.running_var, eps=norm.eps)
        if kind == "bn"
        else F.group_norm(x, 1, eps=norm.eps)
    )
    with passport_mode(norm):
        assert torch.allclose(norm(x), normalised * 49 / 9 - 49 / 9, atol=1e-5)
    if scheme == "v1":  # no learnable affine of its own: the passport one is used in every forward
        assert norm.weight is None and norm.bias is None
        assert torch.allclose(norm(x), normalised * 49 / 9 - 49 / 9, atol=1e-5)
    else:  # the public branch: the norm's own affine (1, 0 at initialisation)
        assert torch.allclose(norm(x), normalised, atol=1e-5)


def test_a_batch_of_passports_is_averaged_over_the_batch_too():
    conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
    passports = torch.randn(4, 2, 6, 6)
    expected = F.conv2d(passports, conv.weight, None, stride=2, padding=1).mean(dim=(0, 2, 3))
    norm = torch.nn.GroupNorm(1, 3)
    branch = DeepIPRBranch(norm, conv, passports, passports, torch.ones(3), scheme="v2", producer_path="conv")
    assert torch.allclose(branch.passport_responses(), torch.stack([expected, expected]), atol=1e-5)


def test_deepipr_v2_can_run_on_groupnorm_as_its_authors_did(tmp_path):
    out = tmp_path / "cmp"
    options = CompareOptions(dataset="digits", arch="small_cnn", width=1.0, schemes=("deepipr-v2",),
                             seeds=(0,), epochs=1, forge_epochs=1, deepipr_v2_norm="gn", out=str(out))
    run = run_compare(options)["runs"][0]
    assert run["norm"] == "gn" and run["signature_detection"] > 0.9 and run["released_architecture_is_plain"]
    with pytest.raises(ConfigError, match="--deepipr-v2-norm 'ln' is not a norm"):
        CompareOptions(deepipr_v2_norm="ln").validate()
