"""Find the sub-networks whose output transforms the data as a matrix (PointNet's T-Nets, spatial
transformers), so that their norms can be told apart from the main path's.

Why they matter: a norm there shapes a matrix that multiplies the features, not the features
themselves, and on PointNet its sign loss does not reach the margin (625 of 1456 channels short
after 15 epochs with the T-Nets protected, 44 of 480 without them) while leaving them out costs no
measured accuracy (docs/RESULTS.md). ``protect(..., transform_layers="skip")`` (the CLI default)
leaves such norms out.

The rule, from data flow only: a module ``C`` is a transform sub-network when, in its parent's
``torch.fx`` graph with ``C`` as a leaf, ``C``'s output reaches an operand of a matrix product
(``bmm``, ``matmul``, ``@``) through shape-only ops (view, transpose, ...) and the other operand
does not depend on ``C``. Attention's ``q @ k^T`` is not one: both operands come from the same
attention module's own computation, never from a whole child module on one side alone.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch import nn

from .norm import SUPPORTED_PRODUCERS

__all__ = ["TRANSFORM_RULE", "find_transform_modules"]

TRANSFORM_RULE = (
    "norms inside a sub-network whose output transforms the data as a matrix (a T-Net) are left out "
    "(--transform-layers protect keeps them): on PointNet their sign loss stayed short of its margin "
    "(625 of 1456 channels after 15 epochs, 44 of 480 without them) and they bought no measured "
    "accuracy (docs/RESULTS.md)"
)

_PRODUCTS = {torch.bmm, torch.matmul, operator.matmul}
_PRODUCT_METHODS = {"bmm", "matmul", "__matmul__"}
_SHAPE_ONLY_FUNCTIONS = {torch.transpose, torch.reshape, torch.permute, torch.flatten}
_SHAPE_ONLY_METHODS = {
    "view",
    "reshape",
    "transpose",
    "permute",
    "contiguous",
    "t",
    "flatten",
    "squeeze",
    "unsqueeze",
}


class _ChildrenAsLeaves(fx.Tracer):
    """Traces one module's own forward: each direct child is a single node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return "." not in qualified_name or isinstance(module, SUPPORTED_PRODUCERS)


def _is_product(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _PRODUCTS) or (
        node.op == "call_method" and node.target in _PRODUCT_METHODS
    )


def _is_shape_only(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _SHAPE_ONLY_FUNCTIONS) or (
        node.op == "call_method" and node.target in _SHAPE_ONLY_METHODS
    )


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _transforms_data(node: fx.Node) -> bool:
    """``node``'s value, reshaped at most, is one operand of a matrix product whose other operand
    does not depend on it."""
    frontier = [node]
    while frontier:
        current = frontier.pop()
        for user in current.users:
            if _is_shape_only(user) and user.args and user.args[0] is current:
                frontier.append(user)
            elif _is_product(user) and len(user.args) >= 2:
                others = [a for a in user.args[:2] if a is not current]
                if others and all(
                    isinstance(o, fx.Node) and node not in _ancestors(o) and o is not node for o in others
                ):
                    return True
    return False


def find_transform_modules(model: nn.Module) -> dict[str, str]:
    """{module path: its parent's path} for every child module whose output transforms the data
    as a matrix (see the module docstring); modules whose parent cannot be traced are not judged."""
    found: dict[str, str] = {}
    for parent_path, parent in model.named_modules():
        children = dict(parent.named_children())
        if not children or isinstance(parent, SUPPORTED_PRODUCERS):
            continue
        try:
            graph = _ChildrenAsLeaves().trace(parent)
        except Exception:  # fx raises many kinds; an untraceable forward is simply not judged
            continue
        if not any(_is_product(n) for n in graph.nodes):
            continue
        for node in graph.nodes:
            if node.op == "call_module" and str(node.target) in children and _transforms_data(node):
                path = f"{parent_path}.{node.target}" if parent_path else str(node.target)
                found[path] = parent_path
    return found
