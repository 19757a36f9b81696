"""``kvcalc check``: read an engine's own launch command, say what it will print at start-up,
whether it boots, and the smallest change that does (docs/check.md).

- :mod:`.command` reads the pasted command (environment, ``docker run``, the program);
- :mod:`.flags` reads the engine's arguments against the flag table generated from the
  engine's own parser (``flags/<engine>.json``, tools/gen_engine_flags.py);
- one module per engine (:mod:`.vllm`, :mod:`.sglang`, :mod:`.llamacpp`, :mod:`.ollama`,
  :mod:`.trtllm`) maps its flags to the plan's keywords under the engine's names and applies
  the engine's start-up checks with its messages;
- :func:`run_check` runs the plan (``kvcalc.api.run_plan``, handed in by the API: this package
  sits below it) and verifies each suggested change by running the check again.
"""

from __future__ import annotations

import importlib
import math
import shlex
from dataclasses import replace
from typing import Any, Callable

from ..errors import HubError, KvcalcError, ModelNotFoundError
from .base import Change, Reading, Refusal
from .command import ENGINES, CommandError, Launch, read_command  # noqa: F401

#: engine -> the module that reads its commands
READERS = {"vllm": "kvcalc.launch.vllm", "sglang": "kvcalc.launch.sglang",
           "llamacpp": "kvcalc.launch.llamacpp", "ollama": "kvcalc.launch.ollama",
           "trtllm": "kvcalc.launch.trtllm"}
#: checks after which the engine computes nothing more (no plan is run)
BLOCKING = ("tensor_parallel", "kv_cache_dtype")
#: most suggestions verified and listed
MAX_SUGGESTIONS = 4


def reader(engine: str):
    return importlib.import_module(READERS[engine])


def read(command) -> Reading:
    """The command read for its engine (no model resolved, nothing planned)."""
    launch = read_command(command)
    return reader(launch.engine).read(launch)


def run_check(command, *, run_plan: Callable[..., Any], resolve: Callable[[str], Any],
              gpu: str | None = None, gpus: int | None = None,
              target_concurrency: int | None = None, **measured: Any) -> dict[str, Any]:
    """Everything ``kvcalc check --format json`` prints (docs/check.md): ``boots``,
    ``lines``, ``refusals``, ``ignored_flags``, ``suggestions`` and the ``plan`` behind it."""
    reading = read(command)
    mod = reader(reading.engine)
    model = _resolve(mod, reading, resolve)
    available = gpus if gpus is not None else reading.launch.container_gpus
    context = {"run_plan": run_plan, "gpu": gpu, "gpus": available, "measured": measured,
               "target": target_concurrency}
    verdict = evaluate(mod, reading, model, context)
    reading.notes += getattr(mod, "notes", lambda *a: [])(reading, model, verdict["plan"])
    suggestions = []
    if not verdict["boots"] or (target_concurrency and not verdict["reaches_target"]):
        suggestions = suggest(mod, reading, model, verdict, context)
    tokens = command if isinstance(command, str) else shlex.join(list(command))
    plan = verdict["plan"]
    return {
        "command": tokens, "engine": reading.engine, "engine_display": reading.display,
        "program": reading.launch.program, "image": reading.launch.image,
        "model": reading.model, "resolved_model": model.name,
        "gpu": plan.get("gpu") if plan else gpu, "gpus": available,
        "engine_version": (plan or {}).get("engine_version"),
        "boots": verdict["boots"], "lines": verdict["lines"],
        "refusals": [r.record() for r in verdict["refusals"]],
        "honoured_flags": reading.honoured, "ignored_flags": reading.no_effect,
        "not_modelled_flags": reading.not_modelled,
        "target_concurrency": target_concurrency,
        "concurrency": verdict["concurrency"], "reaches_target": verdict["reaches_target"],
        "suggestions": suggestions, "notes": reading.notes,
        "warnings": list((plan or {}).get("warnings", ())), "plan": plan,
    }


def _resolve(mod, reading: Reading, resolve: Callable[[str], Any]):
    names = getattr(mod, "model_candidates", lambda n: [n])(reading.model)
    last: KvcalcError | None = None
    for name in names:
        try:
            return resolve(name)
        except ModelNotFoundError as exc:
            last = exc
        except HubError:
            preset = preset_for_hub_id(name)
            if preset is None:
                raise
            reading.notes.append(f"the hub is out of reach: {name} read from kvcalc's "
                                 f"built-in preset {preset} (a pinned copy of its config.json)")
            return resolve(preset)
    if len(names) > 1:
        raise ModelNotFoundError(f"{reading.display} model '{reading.model}': no kvcalc preset "
                                 f"matches it (tried {', '.join(names)}); name the model "
                                 f"(kvcalc models) or a GGUF / config.json path instead")
    raise last  # type: ignore[misc]


def preset_for_hub_id(name: str) -> str | None:
    """The built-in or user preset whose hub id is ``name`` (``org/name``, no revision)."""
    from ..sources import all_presets

    key = name.split("@")[0].strip().lower()
    for preset in all_presets():
        if (preset.hub_id or "").lower() == key:
            return preset.name
    return None


def evaluate(mod, reading: Reading, model, context: dict[str, Any]) -> dict[str, Any]:
    """The engine's checks and start-up lines for one reading."""
    refusals = list(reading.refusals) + mod.pre_checks(reading, model)
    plan_kwargs = {**reading.plan, **{k: v for k, v in context["measured"].items()
                                      if v is not None}}
    if context["gpu"] is not None:
        plan_kwargs["gpu"] = context["gpu"]
    gpus = context["gpus"]
    needed = (plan_kwargs.get("tp", 1) * plan_kwargs.get("pp", 1)
              * plan_kwargs.get("replicas", 1))
    if gpus is not None and needed > gpus:
        refusals.append(Refusal(reading.display, "gpu_count",
                                f"the command needs {needed} GPUs (tensor x pipeline x data "
                                f"parallel) and {gpus} are available"))
    record = None
    if not any(r.check in BLOCKING for r in refusals):
        plan_kwargs = {k: v for k, v in plan_kwargs.items() if k != "enforce_eager"} \
            if reading.engine != "vllm" else plan_kwargs
        record = context["run_plan"](model, **plan_kwargs).result.to_dict()
        refusals += mod.plan_refusals(record)
    lines = mod.lines(record) if record else []
    conc = mod.concurrency(record) if record else 0.0
    target = context["target"]
    boots = not refusals
    return {"boots": boots, "lines": lines, "refusals": refusals, "plan": record,
            "concurrency": round(conc, 2),
            "reaches_target": bool(boots and (not target or conc >= target))}


def suggest(mod, reading: Reading, model, verdict: dict[str, Any],
            context: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidate changes that boot (and reach the target), each verified by running the
    check again with the change applied."""
    out = []
    seen = set()
    for change in mod.candidates(reading, model, verdict["plan"], verdict["refusals"],
                                 context["target"]):
        if change.text in seen:
            continue
        seen.add(change.text)
        trial = _apply(reading, change)
        try:
            result = evaluate(mod, trial, model, context)
        except KvcalcError:
            continue
        if result["boots"] and result["reaches_target"]:
            out.append({"change": change.text, "boots": True, "verified": True,
                        "lines": result["lines"], "concurrency": result["concurrency"]})
            if len(out) >= MAX_SUGGESTIONS:
                break
    return out


def _apply(reading: Reading, change: Change) -> Reading:
    settings = dict(change.settings)
    env = settings.pop("env", None)
    trial = reading.with_changes(change.plan, settings)
    if env:
        trial = replace(trial, launch=replace(trial.launch, env={**trial.launch.env, **env}))
    return trial


def scale_down(value: int, floor: int = 256) -> list[int]:
    """Halvings of ``value`` down to ``floor`` (candidate context sizes)."""
    out = []
    v = value
    while v // 2 >= floor:
        v //= 2
        out.append(v)
    return out


__all__ = ["run_check", "read", "read_command", "CommandError", "Refusal", "Reading",
           "Change", "ENGINES", "math"]
