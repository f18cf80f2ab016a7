"""The base of every spec section: frozen, no unknown fields, a stable fingerprint."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

__all__ = ["_Spec"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Fields added after stores were written: left out of the fingerprint while they hold
    #: their default (which reproduces the older behaviour), so cache keys of specs that do
    #: not use them stay valid (ADR 0006).
    _late_fields: ClassVar[tuple[str, ...]] = ()

    def fingerprint(self) -> str:
        """A stable sha256 of the spec's content (used in cache keys and provenance)."""
        payload = json.dumps(self._fingerprint_data(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()

    def _fingerprint_data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.model_dump(mode="json")
        fields = type(self).model_fields
        for name in self._late_fields:
            if getattr(self, name) == fields[name].get_default(call_default_factory=True):
                del data[name]
        for name in fields:
            value = getattr(self, name)
            if isinstance(value, _Spec) and name in data:
                data[name] = value._fingerprint_data()
        return data
