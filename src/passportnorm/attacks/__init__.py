"""Attacks on the ownership proof, one module per family; each states its threat model.

Every attack starts from the released model (the attacker never sees the passport-aware branch
unless its threat model says so) and ends with the owner's ``verify``.
"""

from .ambiguity import ambiguity_one, ambiguity_two, forge_flipped_signature
from .erb import erb_attack
from .finetune import FINETUNE_MODES, finetune
from .forge import forge_attack, forge_key
from .obfuscate import obfuscate, obfuscation_attack
from .prune import prune_sweep
from .transfer import class_split, transfer

__all__ = [
    "ambiguity_one",
    "ambiguity_two",
    "forge_flipped_signature",
    "class_split",
    "erb_attack",
    "transfer",
    "FINETUNE_MODES",
    "finetune",
    "forge_attack",
    "forge_key",
    "obfuscate",
    "obfuscation_attack",
    "prune_sweep",
]
