"""``kvcalc verify``: build the model with transformers and measure its cache.

Everything that imports torch or transformers lives in this package, and nothing outside
``kvcalc.cli.verify`` imports it, so ``kvcalc estimate`` and ``kvcalc plan`` work without them.

Modules:

* :mod:`.backend`  -- import torch/transformers or fail with the install command;
* :mod:`.build`    -- raw config -> transformers config class -> model on a device (random or real
  weights, optional truncation to the first N layers);
* :mod:`.cache`    -- the cache walker: exact bytes of any transformers cache object;
* :mod:`.measure`  -- generate with and without the cache; CPU/CUDA meters (peaks, the cache's
  allocator footprint, timings), out-of-memory and Ctrl-C handling;
* :mod:`.meta`     -- the meta-device check: exact cache shapes for any config, no memory;
* :mod:`.run`      -- one verify run: build, measure, predict, compare; the JSON contract.
"""
