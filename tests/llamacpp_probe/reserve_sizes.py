"""Run under LD_PRELOAD=reserve_probe.so: create every context of the buffers grid on one GGUF
file and print, per context, its case id and the compute buffer's exact bytes (the size after
its last reserve) as JSON. Usage: python reserve_sizes.py MODEL.gguf OUT.json"""

import json
import os
import sys

from kvcalc.verify.llamacpp import _Runtime, buffer_grid, case_id


def main(path: str, out: str) -> None:
    log = out + ".log"
    os.environ["KVCALC_RESERVE_LOG"] = log
    rt = _Runtime(path)
    sizes = {}
    try:
        for s in buffer_grid():
            if os.path.exists(log):
                os.remove(log)
            ctx = rt.lib.llama_init_from_model(rt.model, rt.context_params(s))
            if not ctx:
                sizes[case_id(s)] = None
                continue
            rt.lib.llama_free(ctx)
            with open(log) as fh:
                sizes[case_id(s)] = int(fh.read().split()[-1])
    finally:
        rt.close()
    with open(out, "w") as fh:
        json.dump(sizes, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
