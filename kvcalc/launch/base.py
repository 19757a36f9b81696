"""What every engine reader of ``kvcalc check`` shares: the reading of a command (plan
keywords, the flags honoured / without effect on memory / not modelled), refusals and
candidate changes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .command import CommandError, Launch
from .flags import Given, Parsed, parse, table


@dataclass(frozen=True)
class Refusal:
    """A start-up check the engine fails: the engine, the check's name, its message."""

    engine: str
    check: str
    message: str

    def record(self) -> dict[str, str]:
        return {"engine": self.engine, "check": self.check, "message": self.message}


@dataclass
class Reading:
    """A launch command read for one engine."""

    launch: Launch
    engine: str                     # kvcalc.engines registry name
    display: str                    # "vLLM", "SGLang", ...
    model: str
    plan: dict[str, Any]            # kvcalc.api.run_plan keywords
    honoured: list[dict[str, Any]] = field(default_factory=list)
    no_effect: list[str] = field(default_factory=list)
    not_modelled: list[dict[str, str]] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: engine settings the checks read that are not plan keywords (enforce_eager, env, ...)
    settings: dict[str, Any] = field(default_factory=dict)

    def with_changes(self, plan: dict[str, Any] | None = None,
                     settings: dict[str, Any] | None = None) -> "Reading":
        """A copy with plan keywords / settings replaced (a suggestion to verify)."""
        return replace(self, plan={**self.plan, **(plan or {})},
                       settings={**self.settings, **(settings or {})},
                       refusals=[r for r in self.refusals if r.check == "arguments"])


@dataclass(frozen=True)
class Change:
    """A candidate change: what to write on the command line, and what it changes."""

    text: str
    plan: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Setting:
    """How an engine flag is honoured: the plan keyword it sets and how its value converts
    (a function of the value and the whole reading's parsed arguments)."""

    keyword: str
    convert: Callable[[Any], Any] = lambda v: v


def read_flags(launch: Launch, engine: str, rows: list[dict], style: str,
               positionals: int = 0) -> Parsed:
    return parse(list(launch.args), rows, style, launch.program, positionals)


def classify(reading: Reading, parsed: Parsed, honoured: dict[str, Setting],
             not_modelled: dict[str, str], skip: set[str] = frozenset()) -> None:
    """Sort the flags given into honoured (setting the plan keyword), not modelled (they change
    memory in ways kvcalc does not model: a reason each) and no effect on memory."""
    for g in parsed.given:
        dest = g.option.dest
        if dest in skip:
            continue
        if dest in honoured:
            s = honoured[dest]
            try:
                value = s.convert(g.value)
            except (ValueError, TypeError) as exc:
                raise CommandError(f"cannot read the command at '{g.token}': invalid value "
                                   f"{g.value!r} ({exc})") from None
            reading.plan[s.keyword] = value
            reading.honoured.append({"flag": g.token, "value": g.value, "setting": dest,
                                     "kvcalc": {s.keyword: value}})
        elif dest in not_modelled:
            reading.not_modelled.append({"flag": g.token, "reason": not_modelled[dest]})
        else:
            reading.no_effect.append(g.token)
    if parsed.rejected:
        reading.refusals.append(Refusal(reading.display, "arguments", parsed.rejected))


def given_token(parsed: Parsed, dest: str) -> Given | None:
    last = None
    for g in parsed.given:
        if g.option.dest == dest:
            last = g
    return last


def human_int(value: str) -> int:
    """vLLM's ``human_readable_int`` (vllm/utils/argparse_utils.py): '1k' = 1,000, '1K' =
    1,024, '25.6k' = 25,600; decimals only with decimal suffixes."""
    import re

    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", text)
    if m:
        number, suffix = m.groups()
        if suffix in "kmgt":
            return int(float(number) * 10 ** (3 * ("kmgt".index(suffix) + 1)))
        if "." in number:
            raise ValueError(f"decimals are not allowed with binary suffixes like {suffix}")
        return int(number) * 2 ** (10 * ("KMGT".index(suffix) + 1))
    return int(text)


def flag_table(engine: str) -> dict[str, Any]:
    return table(engine)
