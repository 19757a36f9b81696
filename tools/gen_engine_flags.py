"""Generate kvcalc's tables of each engine's command-line flags from the engine's own parser.

``kvcalc check`` reads an engine's launch command. Which flags exist, which take a value and
which are switches is read here from the engine itself, never typed by hand, and committed as
data (``kvcalc/launch/flags/<engine>.json``); tests/test_check_flags.py compares the committed
tables with the parsers wherever those engines are installed.

    python tools/gen_engine_flags.py vllm     [--python .vllm-venv-0.34.0/bin/python]
    python tools/gen_engine_flags.py sglang   [--python .sglang-venv/bin/python]
    python tools/gen_engine_flags.py llamacpp --source llama.cpp/common/arg.cpp --version 0c1e57098
    python tools/gen_engine_flags.py trtllm   --source tensorrt_llm/commands/serve.py --version 1.2
    python tools/gen_engine_flags.py ollama   --source envconfig/config.go --source cmd/cmd.go \
        --version 0.33.0-rc2

- vLLM: ``vllm serve``'s parser, ``make_arg_parser(FlexibleArgumentParser())``
  (vllm/entrypoints/common/cli_args.py: FrontendArgs + AsyncEngineArgs.add_cli_args, i.e.
  EngineArgs), built in vLLM's own interpreter (installed --no-deps; the GPU fakes of
  tests/vllm_diff/vllm_side.py let it import without a GPU);
- SGLang: ``ServerArgs.add_cli_args(argparse.ArgumentParser())`` (python/sglang/srt/server_args.py),
  in SGLang's interpreter (tests/sglang_diff/install.sh);
- llama.cpp: every ``add_opt(common_arg(...))`` of common/arg.cpp with the examples it is
  registered for (``set_examples``/``set_excludes``): llama-server's and llama-cli's options;
- TensorRT-LLM: the ``@click.option`` declarations of ``trtllm-serve``
  (tensorrt_llm/commands/serve.py; TensorRT-LLM does not install on a CPU);
- Ollama: the ``OLLAMA_*`` variables of envconfig/config.go (``AsMap``) and the flags of
  ``ollama run`` (cmd/cmd.go).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "kvcalc" / "launch" / "flags"

#: run inside the engine's interpreter: the argparse parser's actions as JSON on stdout
ARGPARSE_DUMP = r'''
import argparse, json, sys
def dump(parser):
    out, positionals = [], []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if not a.option_strings:
            positionals.append(a.dest)
            continue
        neg = sorted(getattr(a, "negative_option_strings", None) or
                     [s for s in a.option_strings if s.startswith("--no-")]
                     if isinstance(a, argparse.BooleanOptionalAction) else [])
        nargs = a.nargs
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                          argparse._StoreConstAction, argparse._CountAction,
                          argparse.BooleanOptionalAction)):
            nargs = 0
        flags = [s for s in a.option_strings if s not in neg]
        choices = sorted(str(c) for c in a.choices) if a.choices is not None else None
        out.append({"dest": a.dest, "flags": flags, "negative": neg,
                    "nargs": nargs, "choices": choices})
    out.sort(key=lambda o: o["dest"])
    return {"options": out, "positionals": positionals}
'''

VLLM_SNIPPET = ARGPARSE_DUMP + r'''
sys.path.insert(0, "tests/vllm_diff")
import vllm_side
vllm_side.install_gpu_fakes()
import vllm
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.entrypoints.common.cli_args import make_arg_parser
d = dump(make_arg_parser(FlexibleArgumentParser()))
d["version"] = vllm.__version__
print(json.dumps(d))
'''

SGLANG_SNIPPET = ARGPARSE_DUMP + r'''
import importlib.metadata as md
from sglang.srt.server_args import ServerArgs
p = argparse.ArgumentParser()
ServerArgs.add_cli_args(p)
d = dump(p)
d["version"] = md.version("sglang")
print(json.dumps(d))
'''

SOURCES = {
    "vllm": ("vllm-project/vllm vllm/entrypoints/common/cli_args.py (make_arg_parser: "
             "FrontendArgs + EngineArgs.add_cli_args, vllm/engine/arg_utils.py)"),
    "sglang": "sgl-project/sglang python/sglang/srt/server_args.py (ServerArgs.add_cli_args)",
    "llamacpp": "ggml-org/llama.cpp common/arg.cpp (common_params_parser_init)",
    "trtllm": "NVIDIA/TensorRT-LLM tensorrt_llm/commands/serve.py (trtllm-serve click options)",
    "ollama": "ollama/ollama envconfig/config.go (AsMap), cmd/cmd.go (runCmd flags)",
}


def argparse_engine(engine: str, python: str) -> dict:
    """The engine's argparse parser, dumped by its own interpreter."""
    snippet = VLLM_SNIPPET if engine == "vllm" else SGLANG_SNIPPET
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run([python, "-c", snippet], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=900)
    if done.returncode:
        raise SystemExit(f"{python}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ llama.cpp


def _balanced(text: str, start: int, python: bool = False) -> int:
    """Index just past the parenthesis that closes the one at ``start`` (strings skipped; in
    C++ a single quote opens a character literal, in Python a string)."""
    depth, i, n = 0, start, len(text)
    while i < n:
        c = text[i]
        if c == '"' or (python and c == "'"):
            i += 1
            while text[i] != c:
                i += 2 if text[i] == "\\" else 1
        elif c == "'":
            i += 3 if text[i + 1] != "\\" else 4
            continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced parentheses")


def _strings(brace: str) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', brace)


def llamacpp_options(text: str) -> dict:
    """Every ``add_opt(common_arg(...))`` of common/arg.cpp: its flags, negative flags, whether
    it takes a value (the handler's signature), and the examples it is registered for."""
    options = []
    for m in re.finditer(r"add_opt\(\s*common_arg\(", text):
        open_at = text.index("(", m.start() + len("add_opt"))
        end = _balanced(text, open_at)          # add_opt( ... )
        call = text[open_at + 1:end - 1]
        inner_start = call.index("common_arg(") + len("common_arg")
        inner_end = _balanced(call, inner_start)
        args = call[inner_start + 1:inner_end - 1]
        tail = call[inner_end:]
        lam = re.search(r"\[[^\]]*\]\s*\((\s*common_params[^)]*)\)", args)
        braces = re.findall(r"\{[^{}]*\}", args[:lam.start()] if lam else args)
        flags = _strings(braces[0])
        params = [p.strip() for p in lam.group(1).split(",")] if lam else []
        negative: list[str] = []
        if len(params) == 2 and params[1].startswith("bool"):
            nargs = 0
            negative = _strings(braces[1]) if len(braces) > 1 else []
        else:
            nargs = len(params) - 1
        examples = re.search(r"\.set_examples\(\{([^}]*)\}\)", tail)
        excludes = re.search(r"\.set_excludes\(\{([^}]*)\}\)", tail)
        names = (lambda g: sorted(x.strip().removeprefix("LLAMA_EXAMPLE_").lower()
                                  for x in g.group(1).split(",") if x.strip()))
        options.append({"flags": flags, "negative": negative, "nargs": nargs,
                        "examples": names(examples) if examples else ["common"],
                        "excludes": names(excludes) if excludes else []})
    return {"options": options}


def llamacpp_tables(text: str) -> dict:
    """llama-server's and llama-cli's options (an option belongs to a program when it is
    registered for that example or for COMMON, and not excluded from it)."""
    opts = llamacpp_options(text)["options"]
    out = {}
    for program, example in (("llama-server", "server"), ("llama-cli", "cli")):
        rows = {}
        for o in opts:
            if ((example in o["examples"] or "common" in o["examples"])
                    and example not in o["excludes"]):
                key = o["flags"][-1].lstrip("-")
                rows[key] = {"dest": key.replace("-", "_"), "flags": o["flags"],
                             "negative": o["negative"], "nargs": o["nargs"], "choices": None}
        out[program] = sorted(rows.values(), key=lambda r: r["dest"])
    return out


# ------------------------------------------------------------------------------ TensorRT-LLM


def trtllm_options(text: str) -> dict:
    """The ``@click.option(...)`` declarations of the ``serve`` command of trtllm-serve."""
    start = text.index("def serve(")
    head = text[:start]
    block = head[head.rindex("@click.command"):]
    options = []
    for m in re.finditer(r"@click\.option\(", block):
        end = _balanced(block, m.end() - 1, python=True)
        call = block[m.end():end - 1]
        names = re.findall(r'["\'](-{1,2}[A-Za-z0-9_\-/]+)["\']', call.split("type=")[0]
                           .split("help=")[0].split("default=")[0])
        flags, negative = [], []
        for n in names:
            if "/" in n:
                pos, neg = n.split("/", 1)
                flags.append(pos)
                negative.append(neg)
            else:
                flags.append(n)
        is_flag = "is_flag=True" in call or bool(negative)
        choices = re.search(r"click\.Choice\(\s*\[([^\]]*)\]", call)
        explicit = re.match(r'\s*(?:["\'][^"\']*["\']\s*,\s*)*["\']([A-Za-z_]\w*)["\']', call)
        dest = explicit.group(1) if explicit else flags[0].lstrip("-").replace("-", "_")
        options.append({"dest": dest, "flags": flags,
                        "negative": negative, "nargs": 0 if is_flag else None,
                        "choices": _strings(choices.group(1)) or None if choices else None})
    return {"options": sorted(options, key=lambda o: o["dest"]), "positionals": ["model"]}


# ------------------------------------------------------------------------------ Ollama


def ollama_variables(text: str) -> dict:
    """The ``OLLAMA_*`` variables Ollama's server reads (envconfig/config.go ``AsMap``) and the
    flags of ``ollama run`` (cmd/cmd.go, ``runCmd.Flags()``; give both files)."""
    names = sorted(set(re.findall(r'"(OLLAMA_[A-Z0-9_]+)"\s*:\s*\{', text)))
    run = []
    for kind, name in re.findall(r'runCmd\.Flags\(\)\.(Bool|String|Int|Duration|Float64)\("([\w-]+)"', text):
        optional = re.search(rf'Lookup\("{name}"\)\.NoOptDefVal', text)
        run.append({"dest": name, "flags": [f"--{name}"], "negative": [],
                    "nargs": 0 if kind == "Bool" else ("?" if optional else None),
                    "choices": None})
    return {"variables": names, "run_options": sorted(run, key=lambda o: o["dest"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("engine", choices=("vllm", "sglang", "llamacpp", "trtllm", "ollama"))
    ap.add_argument("--python", help="the engine's interpreter (vllm, sglang)")
    ap.add_argument("--source", action="append",
                    help="the engine's source file(s) (llamacpp, trtllm; ollama: "
                         "envconfig/config.go and cmd/cmd.go)")
    ap.add_argument("--version", help="the engine version the source file is from")
    ap.add_argument("--check", action="store_true",
                    help="compare with the committed table instead of writing it")
    a = ap.parse_args(argv)
    if a.engine in ("vllm", "sglang"):
        python = a.python or str(ROOT / (".vllm-venv-0.34.0" if a.engine == "vllm"
                                          else ".sglang-venv") / "bin" / "python")
        table = argparse_engine(a.engine, python)
    else:
        if not a.source or not a.version:
            ap.error(f"{a.engine} needs --source and --version")
        text = "\n".join(Path(s).read_text(encoding="utf-8", errors="replace")
                          for s in a.source)
        table = {"llamacpp": lambda t: {"programs": llamacpp_tables(t)},
                 "trtllm": trtllm_options, "ollama": ollama_variables}[a.engine](text)
        table["version"] = a.version
    table = {"engine": a.engine, "version": table.pop("version"), "source": SOURCES[a.engine],
             "generated_by": f"python tools/gen_engine_flags.py {a.engine}", **table}
    path = OUT / f"{a.engine}.json"
    text = json.dumps(table, indent=1, sort_keys=False) + "\n"
    if a.check:
        same = path.exists() and json.loads(path.read_text()) == json.loads(text)
        print(f"{path.relative_to(ROOT)}: {'same' if same else 'DIFFERS'}")
        return 0 if same else 1
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
