"""kvcalc check: an engine's own launch command -> its start-up lines, whether it boots, and
the smallest change that does. A thin client of kvcalc.api.check (docs/check.md)."""

from __future__ import annotations

import click

from ..api import CHECK_REFUSED, check as api_check
from ..render import table, to_json, to_yaml
from .common import ByteSize, echo_output, format_option, warn


@click.command(context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.option("--gpu", "-g", default=None,
              help="Catalog GPU (kvcalc gpus) or a memory size such as 48GiB (default h100).")
@click.option("--gpus", type=int, default=None,
              help="GPUs available (default: what docker run --gpus gives, else unlimited).")
@click.option("--target-concurrency", type=int, default=None,
              help="Requests of the full context length that must fit at once; suggestions "
                   "then reach it.")
@click.option("--kv-budget", type=ByteSize(), default=None,
              help="vLLM: the 'Available KV cache memory' a real start-up logged (per GPU).")
@click.option("--free-memory", type=ByteSize(), default=None,
              help="SGLang / TensorRT-LLM: the free GPU memory a real start-up measured.")
@click.option("--weights-memory", type=ByteSize(), default=None,
              help="The weights per GPU a real start-up logged.")
@format_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def check(command, gpu, gpus, target_concurrency, kv_budget, free_memory, weights_memory, fmt):
    """Read an engine's launch command and say what it prints at start-up, whether it boots,
    and the smallest change that does (each verified). Exit 0 boots, 3 the engine would
    refuse, 2 a command kvcalc cannot read.

    \b
    Examples:
      kvcalc check -- vllm serve Qwen/Qwen3-8B --max-model-len 65536 --tensor-parallel-size 2
      kvcalc check --gpu a100-80gb -- python -m sglang.launch_server --model-path Qwen/Qwen3-8B
      kvcalc check -- llama-server -m model.gguf -c 32768 -np 4 -ctk q8_0 -ctv q8_0
      kvcalc check -- OLLAMA_NUM_PARALLEL=4 OLLAMA_KV_CACHE_TYPE=q8_0 ollama run gemma3:4b
      kvcalc check -- trtllm-serve meta-llama/Llama-3.1-8B --max_seq_len 32768
      kvcalc check -- "docker run --gpus all vllm/vllm-openai:v0.34.0 --model Qwen/Qwen3-8B"
    """
    args = list(command)
    if len(args) == 1 and " " in args[0]:
        args = args[0]              # the whole command pasted as one quoted string
    r = api_check(args, gpu=gpu, gpus=gpus, target_concurrency=target_concurrency,
                  kv_budget=kv_budget, free_memory=free_memory, weights_memory=weights_memory)
    d = r.to_dict()
    for message in d["warnings"]:
        warn(message)
    if fmt == "json":
        echo_output(to_json(d))
    elif fmt == "yaml":
        echo_output(to_yaml(d))
    else:
        echo_output(_text(d, fmt))
    if not d["boots"]:
        click.get_current_context().exit(CHECK_REFUSED)


def _text(d: dict, fmt: str) -> str:
    plan = d["plan"] or {}
    out = [f"Command  {d['command']}",
           f"Engine   {d['engine_display']} {d['engine_version'] or ''} ({d['program']})"
           f" · model {d['model']}" + (f" (kvcalc: {d['resolved_model']})"
                                      if d["resolved_model"] != d["model"] else "")
           + (f" · GPU {d['gpu']}" if d["gpu"] else ""), ""]
    if d["lines"]:
        out.append(f"{d['engine_display']} will print:" if d["boots"] else
                   f"{d['engine_display']} would print:")
        out += [f"  {line}" for line in d["lines"]]
        out.append("")
    if d["boots"]:
        out.append("BOOTS: every start-up check kvcalc can foresee passes")
    else:
        out.append("DOES NOT BOOT:")
        out += [f"  [{r['check']}] {r['message']}" for r in d["refusals"]]
    if d["target_concurrency"]:
        out.append(f"concurrency {d['concurrency']:.2f} for target {d['target_concurrency']}: "
                   + ("reached" if d["reaches_target"] else "NOT reached"))
    if d["suggestions"]:
        out += ["", "Changes that boot (each checked again):"]
        rows = [[s["change"], f"{s['concurrency']:.2f}", s["lines"][-1] if s["lines"] else ""]
                for s in d["suggestions"]]
        out.append(table(rows, ["change", "concurrency", "start-up line"], fmt))
    elif not d["boots"] or (d["target_concurrency"] and not d["reaches_target"]):
        out.append("no single change kvcalc tried boots it")
    if d["honoured_flags"]:
        out += ["", "honoured: " + ", ".join(
            h["flag"] if h["value"] in (True, False, None) or "=" in h["flag"]
            else f"{h['flag']} {h['value']}" for h in d["honoured_flags"])]
    if d["not_modelled_flags"]:
        out.append("changes memory, not modelled: " + "; ".join(
            f"{n['flag']} ({n['reason']})" for n in d["not_modelled_flags"]))
    if d["ignored_flags"]:
        out.append("no effect on memory: " + ", ".join(d["ignored_flags"]))
    out += [f"note: {n}" for n in d["notes"]]
    if plan.get("notes"):
        out += [f"note: {n}" for n in plan["notes"]]
    return "\n".join(out)
