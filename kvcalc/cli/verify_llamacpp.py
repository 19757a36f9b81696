"""``kvcalc verify --engine llamacpp``: the CLI side of :mod:`kvcalc.verify.llamacpp`."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ..render import table, to_json, to_yaml
from ..units import format_bytes
from .common import echo_output

EXIT_VERIFY_FAILED = 4


def verify_llamacpp_command(weights, model, server: dict, grid: bool, threads, fmt) -> None:
    """Check llama.cpp's allocation for the given llama-server settings (or the grid)."""
    from ..api import llamacpp_server_settings as server_settings
    from ..api import llamacpp_verify_grid as settings_grid
    from ..api import verify_llamacpp

    path = weights or model
    if path is None:
        raise UsageError("--engine llamacpp needs --weights FILE.gguf")
    if not Path(path).is_file():
        raise UsageError(f"--weights {path}: no such GGUF file")
    if grid and any(v is not None for v in server.values()):
        raise UsageError("--grid checks its own settings: give either --grid or llama-server "
                         "options")
    if grid:
        from ..api import load_model as load_spec

        settings = settings_grid(load_spec(str(path))[1])
    else:
        # llama-cpp-python / the C API defaults where llama-server's differ: one slot
        given = {k: v for k, v in server.items() if v is not None}
        given.setdefault("parallel", 1)
        settings = [server_settings(given)]
    report = verify_llamacpp(str(path), settings, threads or 1)
    if fmt == "json":
        echo_output(to_json(report))
    elif fmt == "yaml":
        echo_output(to_yaml(report))
    else:
        echo_output(_table(report, fmt))
    if not report["passed"]:
        click.get_current_context().exit(EXIT_VERIFY_FAILED)


def _table(report: dict, fmt: str) -> str:
    rows = []
    for r in report["results"]:
        s = r["settings"]
        label = (f"c={s['ctx_size']} np={s['parallel']}{' kvu' if s['kv_unified'] else ''} "
                 f"{s['cache_type_k']}/{s['cache_type_v']} fa={s['flash_attn']} "
                 f"ub={s['ubatch_size']}{' swa_full' if s['swa_full'] else ''}")
        if r["predicted"] is None:
            rows.append((label, "refused", "refused" if r["refused_by_llamacpp"] else "accepted",
                         "PASS" if r["passed"] else "FAIL"))
            continue
        pred = " + ".join(f"{c['cache']} {c['total_bytes']:,}" for c in r["predicted"]["caches"])
        meas = " + ".join(f"{c['cache']} {c['total_bytes']:,}" if c["total_bytes"] is not None
                          else f"{c['cache']} ?" for c in r["measured"]["caches"])
        rows.append((label, pred, meas, "PASS" if r["passed"] else "FAIL"))
    body = table(rows, ("settings", "kvcalc bytes", "llama.cpp bytes", "verdict"), fmt)
    fails = [m for r in report["results"] for m in r["mismatches"]]
    total = sum(r["predicted"]["total_bytes"] for r in report["results"] if r["predicted"])
    head = (f"{report['model']} ({report['weights']}): {report['passed_checks']} of "
            f"{report['checks']} checks passed; {format_bytes(total)} of caches compared")
    return "\n".join([head, "", body] + [f"mismatch: {m}" for m in fails]) + "\n"
