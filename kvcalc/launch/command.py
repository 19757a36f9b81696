"""An engine's launch command, as people paste it: which engine, which program, its arguments
and the environment variables in front.

Forms read (docs/check.md):

- ``vllm serve MODEL [flags]``, ``python -m vllm.entrypoints.openai.api_server --model M ...``;
- ``python -m sglang.launch_server --model-path M [flags]``;
- ``llama-server -m FILE.gguf [flags]``, ``llama-cli ...`` (any path ending in those names);
- ``trtllm-serve [serve] MODEL [flags]``;
- ``ollama run|serve [MODEL]`` with ``OLLAMA_*=...`` in front;
- ``VAR=value ...`` and ``env VAR=value ...`` in front of any of them;
- the same wrapped in ``docker run [docker options] IMAGE [args]`` (``podman run``, ``sudo``)
  for the engines' official images, whose entry points are known: vllm/vllm-openai (``vllm
  serve``), lmsysorg/sglang (none: the command follows), ghcr.io/ggml-org/llama.cpp:server
  (``llama-server``) and :light (``llama-cli``), ollama/ollama (``ollama serve``; the model is
  the one named later with ``ollama run``, give it to ``ollama run`` instead),
  nvcr.io/nvidia/tensorrt-llm/release (none).

A command kvcalc cannot read raises :class:`CommandError` (exit status 2) naming the token it
stopped at.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

from ..errors import UsageError

#: the engines ``kvcalc check`` reads, by the registry names of kvcalc.engines
ENGINES = ("vllm", "sglang", "llamacpp", "ollama", "trtllm")


class CommandError(UsageError):
    """A launch command kvcalc cannot read (exit status 2): one line naming the token."""


@dataclass(frozen=True)
class Launch:
    """One engine launch: the engine (registry name), the program as the engine names it in
    its errors, the arguments after it, the environment variables set in front (or with
    ``docker run -e``) and, for a container, the image."""

    engine: str
    program: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    image: str | None = None
    #: the engine version named by the image tag (``vllm/vllm-openai:v0.33.0`` -> "0.33.0")
    image_version: str | None = None
    #: GPUs a container was given (``docker run --gpus N``), None when not said
    container_gpus: int | None = None


def split_command(command) -> list[str]:
    """The tokens of ``command``: a string is split as a POSIX shell would (quotes, line
    continuations); a list is taken as it is."""
    if isinstance(command, str):
        text = re.sub(r"\\\r?\n", " ", command)
        try:
            tokens = shlex.split(text, comments=False)
        except ValueError as exc:
            raise CommandError(f"cannot read the command: {exc} (quote it as a shell would)") \
                from None
    else:
        tokens = [str(t) for t in command]
    tokens = [t for t in tokens if t != ""]
    if not tokens:
        raise CommandError("no command given: paste the engine's launch command after --, "
                           "e.g. kvcalc check -- vllm serve meta-llama/Llama-3.1-8B")
    return tokens


_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

#: docker run / podman run options that take a value (the rest are switches)
DOCKER_VALUE_OPTIONS = frozenset({
    "-e", "--env", "--env-file", "--gpus", "-p", "--publish", "-v", "--volume", "--name",
    "--ipc", "--shm-size", "--runtime", "--entrypoint", "-w", "--workdir", "--network", "--net",
    "--mount", "-u", "--user", "--device", "--cpus", "-m", "--memory", "--ulimit", "--label",
    "-l", "--restart", "--hostname", "-h", "--add-host", "--cap-add", "--cap-drop",
    "--security-opt", "--pid", "--platform", "--pull", "--log-driver", "--log-opt",
    "--health-cmd", "--cidfile", "--group-add", "--memory-swap", "--tmpfs", "--dns",
    "--uts", "--userns", "--cgroupns", "--stop-signal", "--stop-timeout", "--mac-address",
    "--ip", "--volumes-from", "--link", "--expose", "--annotation", "--device-cgroup-rule",
})

#: official images -> (engine, the program their entry point runs, or None: the command
#: follows the image); matched on the image name without registry tag
IMAGES = {
    "vllm/vllm-openai": ("vllm", "vllm serve"),
    "lmsysorg/sglang": ("sglang", None),
    "ghcr.io/ggml-org/llama.cpp": ("llamacpp", None),     # entry point by tag, below
    "ollama/ollama": ("ollama", "ollama"),           # ENTRYPOINT ollama, CMD serve
    "nvcr.io/nvidia/tensorrt-llm/release": ("trtllm", None),
}
#: ghcr.io/ggml-org/llama.cpp tags -> the program of their entry point
LLAMACPP_IMAGE_TAGS = {"server": "llama-server", "light": "llama-cli", "full": None}


def read_command(command) -> Launch:
    """The :class:`Launch` a pasted command starts (see the module docstring)."""
    tokens = split_command(command)
    env: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in ("sudo", "env", "exec", "nohup", "time"):
            i += 1
        elif _ENV.match(t):
            key, value = t.split("=", 1)
            env[key] = value
            i += 1
        else:
            break
    rest = tokens[i:]
    if not rest:
        raise CommandError(f"no program after the environment variables "
                           f"({' '.join(tokens[:i])})")
    if os.path.basename(rest[0]) in ("docker", "podman") and len(rest) > 1 \
            and rest[1] == "run":
        return _container(rest[2:], env)
    return _program(rest, env)


def _program(tokens: list[str], env: dict[str, str], **container) -> Launch:
    """``tokens`` starting with an engine's program."""
    head = tokens[0]
    name = os.path.basename(head)
    if re.fullmatch(r"python[0-9.]*", name):
        if len(tokens) < 3 or tokens[1] != "-m":
            raise CommandError(f"cannot read the command at '{tokens[1] if len(tokens) > 1 else head}'"
                               f": kvcalc reads 'python -m MODULE' launches of vLLM "
                               f"(vllm.entrypoints.openai.api_server) and SGLang "
                               f"(sglang.launch_server)")
        module = tokens[2]
        if module in ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.api_server"):
            return Launch("vllm", f"python -m {module}", tuple(tokens[3:]), env, **container)
        if module == "sglang.launch_server":
            return Launch("sglang", "python -m sglang.launch_server", tuple(tokens[3:]), env,
                          **container)
        raise CommandError(f"cannot read the command at '{module}': not an engine module "
                           f"kvcalc reads (vllm.entrypoints.openai.api_server, "
                           f"sglang.launch_server)")
    if name == "vllm":
        if len(tokens) < 2 or tokens[1] != "serve":
            got = tokens[1] if len(tokens) > 1 else "(nothing)"
            raise CommandError(f"cannot read the command at '{got}': kvcalc reads 'vllm serve'")
        return Launch("vllm", "vllm serve", tuple(tokens[2:]), env, **container)
    if name in ("llama-server", "llama-cli"):
        return Launch("llamacpp", name, tuple(tokens[1:]), env, **container)
    if name == "trtllm-serve":
        args = tokens[1:]
        if args and args[0] == "serve":
            args = args[1:]
        return Launch("trtllm", "trtllm-serve", tuple(args), env, **container)
    if name == "ollama":
        if len(tokens) < 2 or tokens[1] not in ("run", "serve"):
            got = tokens[1] if len(tokens) > 1 else "(nothing)"
            raise CommandError(f"cannot read the command at '{got}': kvcalc reads 'ollama run "
                               f"MODEL' and 'ollama serve'")
        return Launch("ollama", f"ollama {tokens[1]}", tuple(tokens[2:]), env, **container)
    raise CommandError(f"cannot read the command at '{head}': not a launch command kvcalc "
                       f"reads (vllm serve, python -m vllm.entrypoints.openai.api_server, "
                       f"python -m sglang.launch_server, llama-server, llama-cli, "
                       f"trtllm-serve, ollama run|serve, or docker run IMAGE of one of them)")


def _container(tokens: list[str], env: dict[str, str]) -> Launch:
    """``docker run`` options, the image, and what the image runs."""
    env = dict(env)
    gpus: int | None = None
    entrypoint: str | None = None
    i = 0
    while i < len(tokens) and tokens[i].startswith("-"):
        t = tokens[i]
        key, eq, value = t.partition("=")
        if key in DOCKER_VALUE_OPTIONS or (key.startswith("-") and not key.startswith("--")
                                           and len(key) > 2 and key[:2] in ("-e", "-p", "-v")):
            if not eq and key in DOCKER_VALUE_OPTIONS:
                if i + 1 >= len(tokens):
                    raise CommandError(f"cannot read the command at '{t}': docker run option "
                                       "without its value")
                value = tokens[i + 1]
                i += 1
            elif not eq:            # -eVAR=x, -p8000:8000
                key, value = key[:2], key[2:]
            if key in ("-e", "--env"):
                name, has, val = value.partition("=")
                if has:
                    env[name] = val
                elif name in os.environ:
                    env[name] = os.environ[name]
            elif key == "--gpus":
                gpus = _container_gpus(value)
            elif key == "--entrypoint":
                entrypoint = value
        i += 1
    if i >= len(tokens):
        raise CommandError("cannot read the command: docker run without an image")
    image = tokens[i]
    args = tokens[i + 1:]
    repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    repo = repo.removeprefix("docker.io/")
    known = IMAGES.get(repo)
    container = {"image": image, "container_gpus": gpus}
    if known is None:
        raise CommandError(f"cannot read the command at '{image}': not an official engine "
                           f"image kvcalc knows ({', '.join(IMAGES)}); paste the command the "
                           f"container runs instead")
    engine, program = known
    version = re.match(r"v?(\d+\.\d+(?:\.\d+)?)", tag or "")
    container["image_version"] = version.group(1) if version else None
    if entrypoint:
        return _program([entrypoint, *args], env, **container)
    if engine == "llamacpp":
        base = (tag or "").split("-")[0]
        program = LLAMACPP_IMAGE_TAGS.get(base)
        if program is None and args and args[0] in ("--run", "--server"):
            # the :full image's tools.sh: --run is llama-cli, --server llama-server
            program, args = ("llama-cli" if args[0] == "--run" else "llama-server"), args[1:]
    if engine == "ollama" and not args:
        args = ["serve"]            # the image's CMD, replaced by what follows the image
    if program is None:
        if not args:
            raise CommandError(f"cannot read the command at '{image}': the image runs the "
                               "command given after it, and none is given")
        return _program(args, env, **container)
    return _program([*program.split(), *args], env, **container)


def _container_gpus(value: str) -> int | None:
    """``--gpus all`` (None: every GPU of the host), ``--gpus 2``, ``--gpus '"device=0,1"'``."""
    value = value.strip("'\"")
    if value.isdigit():
        return int(value)
    m = re.search(r"device=([\d,]+)", value)
    if m:
        return len([d for d in m.group(1).split(",") if d])
    m = re.search(r"count=(\d+)", value)
    return int(m.group(1)) if m else None
