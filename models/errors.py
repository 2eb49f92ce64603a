"""driftloop's exceptions. One base, a small tree:

    DriftloopError
    ├── ConfigError          a settings file or environment variable is wrong
    ├── SchemaError          request rows or training data do not fit the feature schema
    ├── ExportError          a model could not be exported to ONNX, or failed the parity check
    └── RegistryError        a version cannot be promoted, rolled back, imported
        ├── UnknownVersion   no such version
        └── IntegrityError   an artifact's checksum does not match: it is refused, never loaded
"""

from __future__ import annotations


class DriftloopError(Exception):
    """Base of every error driftloop raises on purpose."""


class ConfigError(DriftloopError):
    pass


class SchemaError(DriftloopError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ExportError(DriftloopError):
    pass


class RegistryError(DriftloopError):
    pass


class UnknownVersion(RegistryError):
    pass


class IntegrityError(RegistryError):
    pass
