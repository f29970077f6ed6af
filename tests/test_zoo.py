import pytest
import torch

from passportnorm import find_pairs, protect, strip
from passportnorm.errors import ConfigError
from passportnorm.zoo import available_models, build


@pytest.mark.parametrize("norm", ["bn", "gn", "in"])
def test_small_cnn_every_norm_is_protectable(norm):
    model = build("small_cnn", in_channels=1, num_classes=10, width=0.25, norm=norm)
    x = torch.randn(2, 1, 28, 28)
    report = find_pairs(model, x)
    assert [p.norm for p in report.pairs] == ["features.1", "features.5", "features.9"]
    assert not report.unprotectable
    released = strip(protect(model, x))
    assert [type(m) for m in released.modules()] == [type(m) for m in model.modules()]


def test_registry_errors_are_clear():
    assert "small_cnn" in available_models()
    with pytest.raises(ConfigError, match="unknown model 'big_cnn'"):
        build("big_cnn")
    with pytest.raises(ConfigError, match="does not accept"):
        build("small_cnn", depth=3)
    with pytest.raises(ConfigError, match="unknown norm 'ln'"):
        build("small_cnn", norm="ln")
