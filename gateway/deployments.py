"""A model's deployment: its primary, an optional canary and any number of shadows.

Requests that name no version go to the primary, or to the canary with probability
``weight``; each shadow gets a copy of a request with probability ``fraction``, sampled
per request. Deployments are validated here, before anything is stored, so a bad change
is refused whole and the running deployment stays as it was.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from greenroom_client.errors import InvalidArgument, VersionNotFound

Role = Literal["primary", "canary", "shadow"]


@dataclass(frozen=True, slots=True)
class Canary:
    version: str
    weight: float


@dataclass(frozen=True, slots=True)
class Shadow:
    version: str
    fraction: float


def _unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise InvalidArgument(f"{name} must be between 0 and 1, got {value}")


@dataclass(frozen=True, slots=True)
class Deployment:
    model: str
    primary: str
    canary: Canary | None = None
    shadows: tuple[Shadow, ...] = field(default_factory=tuple)

    def validate(self, versions: Sequence[str]) -> None:
        """Every named version exists and has one role; weights and fractions in 0..1."""
        named = [self.primary]
        if self.canary is not None:
            _unit(f"canary {self.canary.version} weight", self.canary.weight)
            named.append(self.canary.version)
        for shadow in self.shadows:
            _unit(f"shadow {shadow.version} fraction", shadow.fraction)
            named.append(shadow.version)
        for version in named:
            if version not in versions:
                raise VersionNotFound(self.model, version, list(versions))
        for version in set(named):
            if named.count(version) > 1:
                raise InvalidArgument(
                    f"version {version} of model '{self.model}' has more than one role "
                    "(primary, canary, shadow)"
                )

    def role_of(self, version: str) -> Role | None:
        """The version's role in this deployment, or None when it has none."""
        if version == self.primary:
            return "primary"
        if self.canary is not None and version == self.canary.version:
            return "canary"
        if any(s.version == version for s in self.shadows):
            return "shadow"
        return None

    def route(self, rng: random.Random) -> tuple[str, Role]:
        """The version that answers a request naming none, and its role."""
        canary = self.canary
        if canary is not None and canary.weight > 0 and rng.random() < canary.weight:
            return canary.version, "canary"
        return self.primary, "primary"

    def sample_shadows(self, rng: random.Random) -> list[str]:
        return [s.version for s in self.shadows if s.fraction > 0 and rng.random() < s.fraction]

    def promoted(self, version: str, old_primary_fraction: float) -> Deployment:
        """``version`` becomes primary; the old primary shadows at the given fraction."""
        _unit("old primary shadow fraction", old_primary_fraction)
        shadows = [s for s in self.shadows if s.version not in (version, self.primary)]
        if old_primary_fraction > 0 and self.primary != version:
            shadows.append(Shadow(self.primary, old_primary_fraction))
        canary = self.canary if self.canary and self.canary.version != version else None
        return Deployment(self.model, version, canary, tuple(shadows))

    def with_shadow(self, version: str, fraction: float) -> Deployment:
        """``version`` (also) shadows at ``fraction``; its other roles are unchanged."""
        shadows = [s for s in self.shadows if s.version != version]
        return Deployment(
            self.model, self.primary, self.canary, (*shadows, Shadow(version, fraction))
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "primary": self.primary,
            "canary": (
                None
                if self.canary is None
                else {"version": self.canary.version, "weight": self.canary.weight}
            ),
            "shadows": [{"version": s.version, "fraction": s.fraction} for s in self.shadows],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        canary = data.get("canary")
        return cls(
            model=data["model"],
            primary=data["primary"],
            canary=None if canary is None else Canary(canary["version"], float(canary["weight"])),
            shadows=tuple(Shadow(s["version"], float(s["fraction"])) for s in data["shadows"]),
        )
