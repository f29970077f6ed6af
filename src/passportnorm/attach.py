"""How a branch attaches to a norm module and leaves it the user's module (DESIGN.md promise 8).

Like ``torch.nn.utils.parametrize``, the norm object stays where it is and its class is swapped
for a generated subclass (``BatchNorm2d`` -> ``PassportAwareBatchNorm2d(BatchNorm2d)``), so
``isinstance`` holds, ``model.bn1.weight`` is still the released parameter and every original
parameter and buffer keeps its name. The branch is one new child, ``passport_aware``, whose
state appears under ``bn1.passport_aware.*``. The generated ``forward`` runs the class's own
forward; in passport mode it runs the same forward with the branch's tensors substituted for
``weight``, ``bias`` and the running statistics, so whatever a subclass adds (timm's
BatchNormAct2d applies an activation) is kept and the affine stays fused in the norm's kernel.
``detach_branch`` removes the child and restores the class: the original module, exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

__all__ = [
    "BINDING",
    "BRANCH_NAME",
    "SECRET_SEED",
    "STAMPS",
    "attach_branch",
    "branch_of",
    "detach_branch",
    "original_class",
    "stamp",
    "substituted",
]

# what protect adds to the model object besides branches: how the bits bind (mode, identity) and where
# the secret seed came from; extract_key reads them, strip removes them
BINDING, SECRET_SEED = "passportnorm_binding", "passportnorm_secret_seed"
STAMPS = (BINDING, SECRET_SEED)


def stamp(model: nn.Module, name: str, value: dict[str, Any]) -> None:
    """Record ``value`` on the model object as ``name`` (one of STAMPS); not a parameter or buffer."""
    object.__setattr__(model, name, value)


BRANCH_NAME = "passport_aware"
_ORIGINAL = "_passportnorm_original_class"
_GENERATED: dict[type[nn.Module], type[nn.Module]] = {}


def original_class(module: nn.Module) -> type[nn.Module]:
    """The user's class of ``module`` (the generated subclass's base when a branch is attached)."""
    return getattr(type(module), _ORIGINAL, type(module))


def branch_of(module: nn.Module) -> Any:
    """The branch attached to ``module``, or None."""
    if _ORIGINAL not in type(module).__dict__:
        return None
    return module._modules.get(BRANCH_NAME)


@contextmanager
def substituted(module: nn.Module, tensors: Mapping[str, Tensor | None]) -> Iterator[nn.Module]:
    """``module`` with ``tensors`` in place of its parameters/buffers of those names, restored on exit.

    The same swap ``torch.func.functional_call`` makes, without calling the module again (which
    would run the user's forward hooks a second time inside one call).
    """
    saved: list[tuple[dict[str, Any], str, Any]] = []
    for name, tensor in tensors.items():
        table: dict[str, Any] = module._parameters if name in module._parameters else module._buffers
        saved.append((table, name, table[name]))
        table[name] = tensor
    try:
        yield module
    finally:
        for table, name, value in reversed(saved):
            table[name] = value


def _aware_class(cls: type[nn.Module]) -> type[nn.Module]:
    """The generated subclass of ``cls`` whose forward defers to the attached branch in passport mode."""
    if cls not in _GENERATED:
        base_forward = cls.forward

        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            branch: Any = self._modules[BRANCH_NAME]
            if not branch.passport_mode:
                return base_forward(self, *args, **kwargs)
            with substituted(self, branch.substitutes()):
                return base_forward(self, *args, **kwargs)

        def __reduce_ex__(self: nn.Module, protocol: int) -> tuple:
            # the generated class has no importable name: pickle (torch.save of a whole model) and
            # deepcopy record the user's class and regenerate this one when loading
            return _new_with_branch, (cls,), self.__getstate__()

        _GENERATED[cls] = type(
            f"PassportAware{cls.__name__}",
            (cls,),
            {
                "forward": forward,
                "__reduce_ex__": __reduce_ex__,
                _ORIGINAL: cls,
                "__module__": __name__,
                "__doc__": cls.__doc__,
            },
        )
    return _GENERATED[cls]


def _new_with_branch(cls: type[nn.Module]) -> nn.Module:
    """An empty instance of the generated subclass of ``cls`` (its state is set by unpickling)."""
    aware = _aware_class(cls)
    return aware.__new__(aware)


def attach_branch(norm: nn.Module, branch: nn.Module) -> None:
    """Give ``norm`` the child ``passport_aware`` = ``branch`` and the class that consults it."""
    if branch_of(norm) is not None:
        raise ValueError(f"this {original_class(norm).__name__} already carries a branch")
    if BRANCH_NAME in norm._modules or hasattr(norm, BRANCH_NAME):
        raise ValueError(f"{type(norm).__name__} already has an attribute {BRANCH_NAME!r}")
    norm.__class__ = _aware_class(type(norm))
    norm.add_module(BRANCH_NAME, branch)


def detach_branch(norm: nn.Module) -> nn.Module:
    """Remove the branch and restore the class: ``norm`` is again exactly the user's module."""
    if branch_of(norm) is None:
        raise ValueError(f"this {type(norm).__name__} carries no branch")
    del norm._modules[BRANCH_NAME]
    norm.__class__ = original_class(norm)
    return norm
