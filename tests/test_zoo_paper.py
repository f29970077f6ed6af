"""The paper's architectures: every norm protectable, promises 1 and 2 hold."""

import pytest
import torch

from passportnorm import find_pairs, passport_mode, protect, strip
from passportnorm.zoo import build


@pytest.mark.parametrize("norm", ["bn", "gn", "in"])
@pytest.mark.parametrize(
    "arch,norms", [("alexnet", 5), ("resnet18", 20)]
)
def test_paper_models_protect_every_norm_and_strip_exactly(arch, norms, norm):
    model = build(arch, in_channels=3, num_classes=10, width=0.125, norm=norm).eval()
    x = torch.randn(2, 3, 32, 32)
    report = find_pairs(model, x)
    assert len(report.pairs) == norms and not report.unprotectable
    protected = protect(model, x, signature="p").eval()
    assert torch.equal(protected(x), model(x))
    with passport_mode(protected):
        aware = protected(x)
    released = strip(protected)
    assert [type(m) for m in released.modules()] == [type(m) for m in model.modules()]
    assert torch.equal(released(x), model(x)) and not torch.equal(aware, model(x))


def test_alexnet_layout_matches_the_paper():
    model = build("alexnet", in_channels=3, num_classes=100, width=1.0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 192, 384, 256, 256]
    assert [c.kernel_size[0] for c in convs] == [5, 5, 3, 3, 3]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    assert model.eval()(torch.randn(1, 3, 28, 28)).shape == (1, 100)


def test_resnet18_has_2_2_2_2_blocks_and_shortcut_norms():
    model = build("resnet18", in_channels=1, num_classes=10, width=0.25)
    blocks = [name for name, _ in model.named_children() if name.startswith("layer")]
    assert [len(getattr(model, b)) for b in blocks] == [2, 2, 2, 2]
    shortcuts = [n for n, _ in model.named_modules() if n.endswith("shortcut.1")]
    assert shortcuts == ["layer2.0.shortcut.1", "layer3.0.shortcut.1", "layer4.0.shortcut.1"]
