"""DeepIPR baseline layers keep their own promises, and `compare` runs end to end."""

import importlib.util
import json
import re

import pytest
import torch
import torch.nn.functional as F

from passportnorm import passport_mode, protected_layers, sign_loss, signature_detection, strip, zoo
from passportnorm.baselines import DeepIPRBranch, protect_deepipr, release_deepipr
from passportnorm.baselines.compare import CompareOptions, run_compare, scheme_recipe
from passportnorm.baselines.deepipr import DeepIPRPassports
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


def test_deepipr_passports_take_channels_round_robin_from_the_images():
    """Channel k comes from image k mod N, at a channel of that image not used before; an RGB
    input takes one whole image; nothing is rescaled (the authors' passports)."""
    images, channels = 3, 8
    # value = 100 * image + channel, so every passport channel says where it came from
    acts = (100 * torch.arange(images).view(-1, 1, 1, 1) + torch.arange(channels).view(1, -1, 1, 1)).float()
    acts = acts.expand(images, channels, 2, 2).clone()
    gamma, beta = DeepIPRPassports(inputs=acts).generate(acts, 1, torch.Generator().manual_seed(0))
    for passport in (gamma, beta):
        origin = passport[0, :, 0, 0].long()
        assert passport.shape == (1, channels, 2, 2)
        assert (origin // 100).tolist() == [k % images for k in range(channels)]
        for image in range(images):
            used = [int(c) for c in origin[origin // 100 == image] % 100]
            assert len(used) == len(set(used))  # no channel of an image is taken twice
    assert not torch.equal(gamma, beta)
    rgb = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(images)])
    whole, _ = DeepIPRPassports(inputs=rgb).generate(rgb, 1, torch.Generator().manual_seed(1))
    assert whole.shape == (1, 3, 4, 4) and whole.unique().numel() == 1
    assert DeepIPRPassports().fit_to(acts, acts, 0.01).equal(acts)


def test_compare_trains_deepipr_as_its_authors_did(tmp_path):
    """By default: V2 on GroupNorm and V1 on BatchNorm, SGD 0.01 with x0.1 at half and three
    quarters of training, passports from the seed's trained plain model (trained first, even when
    plain is not asked for); the recipe of every row is recorded and printed."""
    out = tmp_path / "cmp"
    options = CompareOptions(dataset="digits", arch="small_cnn", width=1.0, schemes=("deepipr-v2", "pan"),
                             seeds=(0,), epochs=4, forge_epochs=1, out=str(out))
    summary = run_compare(options)
    runs = {r["scheme"]: r for r in summary["runs"]}
    assert (out / "plain-seed0" / "model.safetensors").is_file()
    v2 = runs["deepipr-v2"]
    assert v2["norm"] == "gn" and v2["recipe"]["passports"] == "pretrained" and v2["released_architecture_is_plain"]
    assert v2["recipe"]["lr_milestones"] == [2, 3] and v2["recipe"]["weight_decay"] == 1e-4
    # the rate at the end of each epoch: x0.1 once 2 epochs are done, again after 3
    assert [round(r["lr"], 6) for r in v2["history"]] == [0.01, 0.001, 0.0001, 0.0001]
    assert runs["pan"]["norm"] == "bn" and runs["pan"]["recipe"]["passports"] == "shuffle"
    assert "| plain |" not in summary["table"]  # trained for its passports, not asked for in the table
    assert "**deepipr-v2**: SGD lr 0.01 momentum 0.9, weight decay 0.0001, x0.1 at epochs 2, 3; batch 64, 4 epochs; norm gn; joint steps; pretrained passports" in summary["table"]
    assert "**pan**: SGD lr 0.05 momentum 0.9, weight decay 0.0005, cosine decay to 0" in summary["table"]
    shared = CompareOptions(deepipr="shared", schemes=("deepipr-v1",))
    assert scheme_recipe(shared, "deepipr-v1")["lr"] == 0.05 and scheme_recipe(shared, "deepipr-v1")["passports"] == "shuffle"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(recipes={"deepipr-v2": {"norm": "ln"}}), "deepipr-v2: norm 'ln' is not a norm"),
        (dict(recipes={"pan": {"momentun": 0.9}}), "recipes.pan: unknown setting 'momentun'"),
        (dict(recipes={"v2": {}}), "recipes: 'v2' is not a scheme"),
        (dict(recipes={"pan": {"passports": "mine"}}), "pan: passports 'mine'; choose random, image, shuffle, pretrained"),
        (dict(recipes={"pan": {"lr_schedule": "multistep", "lr_milestones": [6, 4]}}), "needs increasing lr_milestones"),
        (dict(recipes={"pan": {"optimizer": "adamw"}}), "unknown optimizer 'adamw'"),
        (dict(deepipr="theirs"), "unknown deepipr 'theirs'; choose authors, shared"),
    ],
)
def test_compare_recipes_are_checked_before_training(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        CompareOptions(**options).validate()


def test_a_finished_run_is_reused_only_with_the_same_recipe(tmp_path):
    options = dict(dataset="digits", arch="small_cnn", width=1.0, schemes=("plain",), seeds=(0,), epochs=1,
                   out=str(tmp_path))
    run_compare(CompareOptions(**options))
    assert run_compare(CompareOptions(**options))["runs"][0]["scheme"] == "plain"  # reused as it is
    with pytest.raises(ConfigError, match=r"plain-seed0 was trained with other settings \(lr\); give another --out"):
        run_compare(CompareOptions(**options, lr=0.02))
    with pytest.raises(ConfigError, match=r"other settings \(epochs\)"):
        run_compare(CompareOptions(**{**options, "epochs": 2}))


def test_every_alexnet_passport_block_is_a_bias_free_conv_norm_relu():
    """DeepIPR's PassportBlock: conv (no bias) -> norm -> ReLU, on AlexNet's last 3 convs (its placement)."""
    from passportnorm.baselines.compare import PLACEMENTS

    features = zoo.build("alexnet", in_channels=3, num_classes=10, width=0.25).features
    for path in PLACEMENTS["deepipr"]["alexnet"]:
        index = int(path.split(".")[1])
        conv, norm, relu = features[index - 1], features[index], features[index + 1]
        assert isinstance(conv, torch.nn.Conv2d) and conv.bias is None
        assert isinstance(norm, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)


def test_a_hub_model_that_keeps_its_norms_is_refused_before_training(tmp_path):
    """tv:/timm: models keep their BatchNorms, so DeepIPR V2 cannot run 'on GroupNorm' there: say so."""
    if importlib.util.find_spec("timm") is None:  # find_spec: a plain import fails beside the CPU torch wheel
        pytest.skip("needs the zoo extra (timm): pip install 'passportnorm[zoo]'")
    options = CompareOptions(dataset="digits", arch="timm:resnet10t", width=1.0, schemes=("deepipr-v2",), seeds=(0,),
                             epochs=1, out=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"timm:resnet10t keeps its own norms \(BatchNorm2d\), so deepipr-v2's norm 'gn'"):
        run_compare(options)
    assert not (tmp_path / "out").exists()
    shared = CompareOptions(**{**options.__dict__, "recipes": {"deepipr-v2": {"norm": "bn"}}})
    from passportnorm.baselines.compare import _check_norms
    from passportnorm.data import load_dataset

    _check_norms(shared, load_dataset("digits", seed=0))  # bn is what it has: accepted
