"""passportnorm: passport-aware normalization for deep model ownership protection.

Protect any PyTorch model in a few lines::

    protected = passportnorm.protect(model, example_input, signature="(c) Alice 2026")
    ...train both branches (see passportnorm.passport_mode and passportnorm.sign_loss)...
    released = passportnorm.strip(protected)     # the original architecture, nothing added
"""

from .attach import original_class
from .aware_statistics import AwareStatistics
from .branch import PassportAwareBranch
from .detection import DetectionReport, LayerDetection, extract_bits, signature_detection
from .errors import (
    AlreadyProtectedError,
    NoPassportForwardError,
    NothingToProtectError,
    NotProtectedError,
    PairingError,
    PassportError,
    PassportNormError,
    PassportWarning,
    SignatureCapacityError,
    SignatureError,
)
from .pairing import Pair, PairingReport, Unprotectable, find_pairs
from .passports import ImagePassports, PassportGenerator, RandomPassports, ShufflePassports
from .protect import (
    capacity,
    is_protected,
    passport_mode,
    protect,
    protected_layers,
    sign_loss,
    statistics_layers,
    strip,
)
from .schedule import PassportSchedule
from .signature import Signature

__version__ = "0.1.0"

__all__ = [
    "protect",
    "strip",
    "passport_mode",
    "sign_loss",
    "PassportSchedule",
    "signature_detection",
    "capacity",
    "find_pairs",
    "is_protected",
    "protected_layers",
    "statistics_layers",
    "extract_bits",
    "Signature",
    "PassportAwareBranch",
    "AwareStatistics",
    "original_class",
    "PassportGenerator",
    "RandomPassports",
    "ImagePassports",
    "ShufflePassports",
    "Pair",
    "PairingReport",
    "Unprotectable",
    "DetectionReport",
    "LayerDetection",
    "PassportNormError",
    "PassportWarning",
    "AlreadyProtectedError",
    "NotProtectedError",
    "NoPassportForwardError",
    "NothingToProtectError",
    "PairingError",
    "PassportError",
    "SignatureError",
    "SignatureCapacityError",
    "__version__",
]
