"""kvcalc versions: the engine versions kvcalc models, the installed ones, and drift."""

from __future__ import annotations

import textwrap

import click

from ..render import table, to_csv, to_json, to_yaml
from ..api import engine_versions as all_engine_versions, verify_requirement
from .common import echo_output, format_option, warn


@click.command()
@format_option
def versions(fmt):
    """The engine versions kvcalc models: each engine's version bands (what changes between
    them, with sources), the newest release checked against the engine itself, the release
    installed here, and a notice when the installed one is newer than the newest checked.

    \b
    Examples:
      kvcalc versions
      kvcalc versions --format json
    """
    found = all_engine_versions()
    requirement = verify_requirement()
    records = [v.record() for v in found]
    if fmt in ("json", "yaml"):
        doc = {"engines": records, "verify_requires_transformers": requirement}
        echo_output(to_json(doc) if fmt == "json" else to_yaml(doc))
    elif fmt == "csv":
        echo_output(to_csv([{"engine": r["engine"], "band": b["name"], "versions": b["versions"],
                             "changes": " | ".join(b["changes"]),
                             "sources": " | ".join(b["sources"]),
                             "newest_checked": r["newest_checked"],
                             "installed": r["installed"] or "", "status": r["status"]}
                            for r in records for b in r["bands"]]))
    else:
        summary = [(r["display_name"], r["version_flag"] or "-", r["default_version"] or "-",
                    r["newest_checked"] or "-", r["installed"] or "not installed",
                    r["installed_band"] or "-", r["status"]) for r in records]
        bands = [(r["display_name"], b["versions"],
                  "\n".join(textwrap.fill(c, 88, subsequent_indent="  ") for c in b["changes"])
                  or "-")
                 for r in records for b in r["bands"]]
        text = (table(summary, ("engine", "flag", "default band", "newest checked", "installed",
                                "installed band", "status"), fmt)
                + "\n\n" + table(bands, ("engine", "versions", "what the band models"), fmt)
                + "\n\n" + "verify needs transformers "
                + (requirement or "(kvcalc's metadata not found)")
                + "; sources of each band: kvcalc versions --format json, docs/engines.md\n")
        echo_output(text)
    for v in found:
        if v.notice:
            warn(v.notice)
