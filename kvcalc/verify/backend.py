"""Import torch and transformers, or end with one line that says how to install them."""

from __future__ import annotations

from types import ModuleType

from ..errors import KvcalcError

INSTALL_HINT = (
    "pip install 'kvcalc[verify]' (CPU-only torch: pip install torch "
    "--index-url https://download.pytorch.org/whl/cpu)"
)


class BackendMissingError(KvcalcError):
    """torch or transformers is not installed."""


def require(*extra: str) -> tuple[ModuleType, ModuleType]:
    """Return ``(torch, transformers)``; raise :class:`BackendMissingError` when one is missing.

    ``extra`` names further packages the caller needs (e.g. ``gguf``), each checked the same way.
    """
    missing = []
    mods = {}
    for name in ("torch", "transformers", *extra):
        try:
            mods[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        what = " and ".join(missing)
        raise BackendMissingError(
            f"kvcalc verify needs {what}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed: {INSTALL_HINT}"
        )
    check_transformers_floor(mods["transformers"].__version__)
    return mods["torch"], mods["transformers"]


def check_transformers_floor(installed: str) -> None:
    """Refuse a transformers release older than the floor of the ``verify`` extra (read from
    kvcalc's metadata): older releases fail on meta tensors, lack model classes, or lay states
    out differently, and a verdict against them would mislead (docs/verification.md)."""
    from ..versions import release, verify_requirement

    requirement = verify_requirement()
    if not requirement or not requirement.startswith(">="):
        return
    floor = requirement[2:]
    if release(installed) < release(floor):
        raise BackendMissingError(
            f"kvcalc verify needs transformers {requirement}; {installed} is installed: "
            f"pip install -U 'transformers{requirement}'")


def versions() -> dict[str, str]:
    """Installed torch and transformers versions (for reports)."""
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}
