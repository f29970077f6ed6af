"""Other schemes we compare against: DeepIPR passport layers (V1, V2), and the comparison itself."""

from .deepipr import SCHEMES, DeepIPRBranch, protect_deepipr, release_deepipr

__all__ = ["SCHEMES", "DeepIPRBranch", "protect_deepipr", "release_deepipr"]
