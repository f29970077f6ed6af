"""Other schemes we compare against: DeepIPR passport layers (V1, V2), and the comparison itself."""

from .deepipr import SCHEMES, DeepIPRNorm, protect_deepipr, release_deepipr

__all__ = ["SCHEMES", "DeepIPRNorm", "protect_deepipr", "release_deepipr"]
