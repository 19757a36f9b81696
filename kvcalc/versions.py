"""Which engine versions kvcalc models, which are installed here, and whether they drifted.

Every engine (:mod:`kvcalc.engines`) names its version bands (ranges of releases over which the
modelled rules do not change), the newest release its figures were checked against in CI, and
the distribution whose installed version is reported. This module compares the three and turns
the result into records (``kvcalc versions``) and notices (estimate, plan, verify):

* ``checked``: the installed release is the newest checked one (or an older release inside a
  modelled band);
* ``newer``: the installed release is newer than the newest one checked: the figures follow
  the newest band, which the engine may have moved — ``kvcalc verify --device meta --all``
  checks the transformers layout against it in seconds;
* ``outside``: no modelled band holds the installed release;
* ``absent``: the engine is not installed (kvcalc's figures do not need it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .engines import Engine, engines
from .errors import UsageError

#: statuses of an installed engine version (see the module docstring)
CHECKED, NEWER, OUTSIDE, ABSENT = "checked", "newer", "outside", "absent"


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "5.24.0" -> (5, 24, 0), "0.33.0rc1" ->
    (0, 33, 0), "2.13.0+cpu" -> (2, 13, 0); () when it starts with no number."""
    parts = []
    for piece in version.strip().split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.end() < len(piece):  # "0rc1", "0+cpu": the rest is not part of the release
            break
    return tuple(parts)


def newer_than(installed: str, checked: str) -> bool:
    """True when ``installed`` is a later release than ``checked`` (missing parts count as 0)."""
    a, b = release(installed), release(checked)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) > b + (0,) * (width - len(b))


@dataclass(frozen=True)
class EngineVersions:
    """One engine: its bands, the newest release checked, the installed one and the verdict."""

    engine: Engine
    installed: str | None
    status: str
    band: str | None          # the band that models the installed release, if any

    @property
    def notice(self) -> str | None:
        """One line for the user when the installed release is not one kvcalc checked."""
        e = self.engine
        if self.status == NEWER:
            return (f"{e.display_name} {self.installed} is installed, newer than the newest "
                    f"version kvcalc checked ({e.newest_checked}): figures use the {self.band} "
                    "rules, unverified"
                    + ("; `kvcalc verify --device meta --all` checks them against it"
                       if e.name == "hf" else ""))
        if self.status == OUTSIDE:
            return (f"{e.display_name} {self.installed} is installed, outside the bands kvcalc "
                    f"models ({', '.join(b.versions for b in e.bands)})")
        return None

    def record(self) -> dict[str, Any]:
        e = self.engine
        return {
            "engine": e.name, "display_name": e.display_name, "package": e.package,
            "version_flag": e.version_flag, "default_version": e.default_version,
            "newest_checked": e.newest_checked, "installed": self.installed,
            "installed_band": self.band, "status": self.status, "notice": self.notice,
            "bands": [{"name": b.name, "versions": b.versions, "changes": list(b.changes),
                       "sources": list(b.sources)} for b in e.modelled_bands()],
        }


def engine_versions(engine: Engine, installed: str | None = None) -> EngineVersions:
    """Compare ``engine``'s bands with its installed release (``installed`` overrides what
    importlib.metadata finds; tests use it to stand in for a future release)."""
    installed = installed if installed is not None else engine.installed_version()
    if installed is None:
        return EngineVersions(engine, None, ABSENT, None)
    short = ".".join(str(p) for p in release(installed)[:2])
    try:
        band = engine.band(short).name
    except UsageError:  # a version no band holds, or one that does not parse
        return EngineVersions(engine, installed, OUTSIDE, None)
    status = NEWER if newer_than(installed, engine.newest_checked) else CHECKED
    return EngineVersions(engine, installed, status, band)


def drift_notice(layout: Any) -> str | None:
    """The notice for a figure modelled with ``layout``: set when the engine installed here is a
    release newer than the newest one checked and the layout models the newest band (the band
    that release falls into), None otherwise."""
    from .engines import get_engine

    return _installed_notice(get_engine(layout.engine), getattr(layout, "band", None))


def _installed_notice(engine: Engine, band: str | None) -> str | None:
    """:func:`drift_notice` for ``engine``'s figures modelled in ``band``."""
    found = engine_versions(engine)
    if found.status != NEWER or found.band != band:
        return None
    return found.notice


def engine_version_notices(engine_name: str, version: str | None = None) -> list[str]:
    """Every "newer than checked" line for figures of ``engine_name`` modelled at ``version``
    (None: the engine's default): the version asked for (``--vllm-version 0.35``) when it is
    newer than the newest one checked, and the installed engine when it is
    (:func:`drift_notice`). Estimate, plan, simulate and the API results carry them."""
    from .engines import get_engine

    engine = get_engine(engine_name)
    notices = [engine.newer_notice(version),
               _installed_notice(engine, engine.band(version).name)]
    return [n for n in dict.fromkeys(notices) if n]


def version_notices(layout: Any) -> list[str]:
    """:func:`engine_version_notices` for the engine and version ``layout`` models."""
    return engine_version_notices(layout.engine, getattr(layout, "version", None))


def all_engine_versions() -> list[EngineVersions]:
    return [engine_versions(e) for e in engines()]


def verify_requirement(package: str = "transformers") -> str | None:
    """The version range kvcalc's ``verify`` extra requires of ``package`` (from the installed
    kvcalc's metadata, the same line as pyproject.toml), e.g. ">=5.5"; None when unknown."""
    from importlib import metadata  # ~15 ms: only verify asks

    try:
        requires = metadata.requires("kvcalc") or []
    except metadata.PackageNotFoundError:
        return None
    for line in requires:
        req, _, marker = line.partition(";")
        m = re.match(rf"\s*{re.escape(package)}\s*([<>=!~][^;]*)$", req.strip(), re.I)
        if m and "verify" in marker:
            return m.group(1).replace(" ", "")
    return None
