"""Exceptions raised by passportnorm.

Every error names the module path, file or value at fault and what to do about it, so that
the CLI can print it as a single line. Catch :class:`PassportNormError` to catch them all.
"""

from __future__ import annotations


class PassportNormError(Exception):
    """Base class of every error passportnorm raises on purpose."""


class AlreadyProtectedError(PassportNormError):
    """``protect`` was given a model that already carries passport-aware branches."""


class NotProtectedError(PassportNormError):
    """An operation needs passport-aware branches and the model has none."""


class PairingError(PassportNormError):
    """A norm layer could not be paired with its producer, or an explicit pair is invalid."""


class NothingToProtectError(PairingError):
    """No norm layer of the model can carry a passport-aware branch."""


class SignatureError(PassportNormError):
    """A signature is malformed (wrong values, wrong length, undecodable)."""


class SignatureCapacityError(SignatureError):
    """The owner's message has more bits than the protected channels can hold."""


class PassportError(PassportNormError):
    """Passports could not be generated from the given inputs."""


class NoPassportForwardError(PassportNormError):
    """The sign loss was asked for before any passport-aware forward produced the values it needs."""


class DatasetError(PassportNormError):
    """A dataset is unknown, or its folder or files are missing or malformed."""


class ConfigError(PassportNormError):
    """An option has a value the tool cannot use (unknown model, bad setting)."""


class PassportWarning(UserWarning):
    """Something will work, but less well than the user probably expects."""


class OwnerKeyError(PassportNormError):
    """An owner key is missing, corrupted, of an unknown format, or does not fit the model."""


class ModelFileError(PassportNormError):
    """A released-model folder is missing, corrupted, a pickle, or for another architecture."""


class CertificateError(PassportNormError):
    """A certificate is unreadable or does not match the key or released model it names."""


class TrainingError(PassportNormError):
    """Training cannot go on (a NaN loss, an unusable checkpoint)."""
