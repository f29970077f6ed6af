"""torchvision and timm models by name (the zoo extra), and the import that works with the CPU torch wheel."""

import importlib.util
import warnings

import pytest
import torch

import passportnorm as pn
from passportnorm import zoo
from passportnorm.cli import main
from passportnorm.errors import ConfigError
from passportnorm.fileio import tensors_fingerprint
from passportnorm.release import load_released, save_released
from passportnorm.zoo.hub import import_timm, import_torchvision

# find_spec, not importorskip: a plain `import torchvision` is exactly what fails next to the CPU torch wheel
pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("torchvision", "timm")),
    reason="the zoo extra is not installed: pip install 'passportnorm[zoo]'",
)


def test_torchvision_imports_even_where_its_compiled_ops_cannot_load():
    torchvision = import_torchvision()
    assert "resnet18" in torchvision.models.list_models(module=torchvision.models)
    assert import_timm().is_model("efficientnet_b0")


@pytest.mark.parametrize("name,channels", [("tv:resnet18", 1), ("timm:resnet18", 3)])
def test_hub_models_are_protected_with_the_promises_intact(name, channels, tmp_path):
    torch.manual_seed(0)
    model = zoo.build(name, in_channels=channels, num_classes=10).eval()
    x = torch.randn(2, channels, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pn.PassportWarning)
        protected = pn.protect(model, x, signature="(c) hub", seed=0).eval()
    assert pn.capacity(protected) >= 128
    with torch.no_grad():
        assert torch.equal(protected(x), model(x))  # promise 1: the free branch is the original, bit for bit
        released = pn.strip(protected)
        assert torch.equal(released(x), model(x))
    assert {k: v.shape for k, v in released.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert all(type(m) is type(o) for (_, m), (_, o) in zip(released.named_modules(), model.named_modules()))
    save_released(released, tmp_path / "r", name, {"in_channels": channels, "num_classes": 10})
    loaded, meta = load_released(tmp_path / "r")
    assert meta["arch"] == name and tensors_fingerprint(loaded.state_dict()) == tensors_fingerprint(released.state_dict())


def test_a_grayscale_torchvision_model_gets_a_one_channel_stem():
    model = zoo.build("tv:resnet18", in_channels=1, num_classes=10)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64 and model.fc.out_features == 10


def test_unknown_hub_names_are_one_line_errors(capsys):
    with pytest.raises(ConfigError, match="torchvision has no classification model 'resnet9000'"):
        zoo.build("tv:resnet9000")
    with pytest.raises(ConfigError, match="timm has no model 'nope'"):
        zoo.build("timm:nope")
    assert main(["inspect", "--arch", "timm:nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "timm has no model" in err


def test_inspect_reports_hub_models(capsys):
    assert main(["inspect", "--arch", "tv:resnet18", "--dataset", "cifar10"]) == 0
    assert "20 protectable norm layers" in capsys.readouterr().out
