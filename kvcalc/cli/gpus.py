"""kvcalc gpus: the GPU catalog."""

from __future__ import annotations

import click

from ..api import gpu_catalog as load_catalog
from ..render import table, to_csv, to_json, to_yaml
from .common import echo_output, format_option


@click.command()
@format_option
def gpus(fmt):
    """List the GPU catalog: memory as the runtime reports it (bytes and GiB = 2^30), the
    marketing figure, bandwidth, and where each figure comes from.

    \b
    Examples:
      kvcalc gpus
      kvcalc gpus --format json
    """
    rows = []
    for g in load_catalog():
        r = g.model_dump()
        r["aliases"] = list(r["aliases"])
        r["memory_gib"] = round(g.memory_gib, 2)   # GiB = 2^30 bytes
        rows.append(r)
    if fmt == "json":
        echo_output(to_json(rows))
    elif fmt == "yaml":
        echo_output(to_yaml(rows))
    elif fmt == "csv":
        echo_output(to_csv(rows))
    else:
        body = [(g.name, ", ".join(g.aliases[:3]), f"{g.memory_bytes:,}", f"{g.memory_gib:.2f}",
                 g.marketing_memory or "-",
                 f"{g.memory_bandwidth_bytes_per_s / 1e12:.2f}" if g.memory_bandwidth_bytes_per_s else "-",
                 "yes" if g.fp8 else "no",
                 "derived" if (g.memory_source or "").startswith("derived") else "measured")
                for g in load_catalog()]
        echo_output(table(body, ("name", "aliases", "memory bytes", "GiB", "marketing", "TB/s",
                                 "fp8", "memory figure"), fmt)
                    + "\nmemory = total reported by the runtime (cudaMemGetInfo / torch); "
                      "sources: presets/gpus/SOURCES.md\n")
