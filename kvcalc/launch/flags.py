"""Reading an engine's arguments against the flag table generated from its own parser
(``kvcalc/launch/flags/<engine>.json``, tools/gen_engine_flags.py), the way that parser reads
them:

- ``argparse`` (SGLang's ``ServerArgs``) and ``flexible`` (vLLM's ``FlexibleArgumentParser``:
  ``--max_model_len`` = ``--max-model-len``, ``--compilation-config.cudagraph_mode=NONE``,
  ``-O3``): ``--flag value``, ``--flag=value``, a unique prefix of a long flag; an unknown
  flag is refused as argparse does ("PROG: error: unrecognized arguments: ...");
- ``click`` (trtllm-serve): ``--flag value``, ``--flag=value``; "Error: No such option: ...";
- ``llamacpp`` (common/arg.cpp): the exact flag (``--`` flags with ``_`` read as ``-``);
  "error: invalid argument: ...".

A flag whose value is missing makes the command unreadable (:class:`CommandError`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from .command import CommandError


@lru_cache(maxsize=None)
def table(engine: str) -> dict[str, Any]:
    """The committed flag table of ``engine`` (vllm, sglang, llamacpp, trtllm, ollama)."""
    text = resources.files("kvcalc.launch").joinpath("flags", f"{engine}.json").read_text(
        encoding="utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class Option:
    dest: str
    flags: tuple[str, ...]
    negative: tuple[str, ...]
    nargs: Any          # 0: a switch; None / 1: one value; "?": optional; "+" / "*": several

    @property
    def switch(self) -> bool:
        return self.nargs == 0


def options(rows: list[dict[str, Any]]) -> list[Option]:
    return [Option(r["dest"], tuple(r["flags"]), tuple(r.get("negative") or ()), r["nargs"])
            for r in rows]


@dataclass(frozen=True)
class Given:
    """One flag as the command gives it: the token typed, the option, its value (a string,
    a list of strings, or for a switch True / False)."""

    token: str
    option: Option
    value: Any
    #: ``--compilation-config.cudagraph_mode``: the dotted key after the flag
    subkey: str | None = None


@dataclass
class Parsed:
    positionals: list[str] = field(default_factory=list)
    given: list[Given] = field(default_factory=list)
    #: the engine's own rejection of the arguments (its words), None when it reads them all
    rejected: str | None = None
    unknown: list[str] = field(default_factory=list)

    def value(self, dest: str, default: Any = None) -> Any:
        """The last value given for ``dest`` (argparse keeps the last), else ``default``."""
        out = default
        for g in self.given:
            if g.option.dest == dest and g.subkey is None:
                out = g.value
        return out

    def has(self, dest: str) -> bool:
        return any(g.option.dest == dest for g in self.given)


def parse(args: list[str], rows: list[dict[str, Any]], style: str, prog: str,
          positionals: int = 0) -> Parsed:
    """Read ``args`` as the engine's parser (``style``) would; ``prog`` names the program in
    the engine's error; ``positionals``: how many positional arguments the parser takes."""
    opts = options(rows)
    lookup: dict[str, tuple[Option, bool]] = {}
    for o in opts:
        for f in o.flags:
            lookup[f] = (o, True)
        for f in o.negative:
            lookup[f] = (o, False)
    out = Parsed()
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            out.positionals.extend(args[i:])
            break
        if not token.startswith("-") or token == "-" or _is_number(token):
            if (out.unknown and style in ("argparse", "flexible")
                    and len(out.positionals) >= positionals):
                out.unknown.append(token)      # argparse lists what follows an unknown flag
            else:
                out.positionals.append(token)
            continue
        name, eq, inline = token.partition("=")
        subkey = None
        if style == "flexible":
            if name.startswith("-O") and name != "-O" and not eq:
                name, inline, eq = "--optimization-level", name[2:], "="
            elif name.startswith("--"):
                head, dot, rest = name[2:].partition(".")
                name = "--" + head.replace("_", "-")
                subkey = rest or None
            elif "." in name:
                name, _, subkey = name.partition(".")
        elif style == "llamacpp" and name.startswith("--"):
            name = name.replace("_", "-")
        hit = lookup.get(name)
        if hit is None and style in ("argparse", "flexible") and name.startswith("--"):
            prefixed = sorted({(o.dest, f) for f, (o, _) in lookup.items()
                               if f.startswith(name)})
            dests = {d for d, _ in prefixed}
            if len(dests) == 1:
                hit = lookup[prefixed[0][1]]
            elif len(dests) > 1:
                flags = ", ".join(f for _, f in prefixed)
                out.rejected = out.rejected or (f"{prog}: error: ambiguous option: {name} "
                                                f"could match {flags}")
                continue
        if hit is None:
            out.unknown.append(token)
            continue
        opt, positive = hit
        if opt.switch:
            if eq and style == "click":
                value = inline.lower() in ("1", "true", "yes", "on")
            else:
                value = positive
            out.given.append(Given(token, opt, value, subkey))
            continue
        if eq:
            out.given.append(Given(token, opt, inline, subkey))
            continue
        if opt.nargs == "?":
            if i < len(args) and not args[i].startswith("-"):
                out.given.append(Given(token, opt, args[i], subkey))
                i += 1
            else:
                out.given.append(Given(token, opt, None, subkey))
            continue
        count = opt.nargs if isinstance(opt.nargs, int) and opt.nargs > 1 else 1
        if opt.nargs in ("+", "*"):
            values = []
            while i < len(args) and (not args[i].startswith("-") or _is_number(args[i])):
                values.append(args[i])
                i += 1
            if not values and opt.nargs == "+":
                raise CommandError(f"cannot read the command at '{token}': {prog}: error: "
                                   f"argument {token}: expected at least one argument")
            out.given.append(Given(token, opt, values, subkey))
            continue
        if i + count > len(args) or (style != "llamacpp" and args[i].startswith("-")
                                     and not _is_number(args[i])):
            said = {"llamacpp": "expected value for argument",
                    "click": f"Error: Option '{token}' requires an argument."}.get(
                style, f"{prog}: error: argument {token}: expected one argument")
            raise CommandError(f"cannot read the command at '{token}': {said}")
        value = args[i] if count == 1 else list(args[i:i + count])
        out.given.append(Given(token, opt, value, subkey))
        i += count
    if out.unknown and out.rejected is None:
        if style == "llamacpp":
            out.rejected = f"error: invalid argument: {out.unknown[0]}"
        elif style == "click":
            out.rejected = f"Error: No such option: {out.unknown[0]}"
        else:
            out.rejected = f"{prog}: error: unrecognized arguments: {' '.join(out.unknown)}"
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
