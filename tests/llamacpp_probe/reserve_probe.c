/* LD_PRELOAD probe for tests/test_llamacpp_verify.py: the exact bytes of llama.cpp's compute
 * buffer. llama.cpp logs it in MiB (2 decimals at INFO, 4 at DEBUG); this wraps ggml-alloc's
 * ggml_gallocr_reserve_n (ggml/src/ggml-alloc.c, called by ggml_backend_sched_reserve) and,
 * after each reserve, appends ggml_gallocr_get_buffer_size(galloc, 0) -- the buffer the
 * scheduler keeps for the first backend (the CPU) -- as one line to $KVCALC_RESERVE_LOG.
 * No ggml headers needed: the two public functions are declared here as ggml-alloc.h does. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ggml_gallocr * ggml_gallocr_t;
struct ggml_cgraph;
size_t ggml_gallocr_get_buffer_size(ggml_gallocr_t galloc, int buffer_id);
typedef bool (*reserve_fn)(ggml_gallocr_t, struct ggml_cgraph *, const int *, const int *);

bool ggml_gallocr_reserve_n(ggml_gallocr_t galloc, struct ggml_cgraph * graph,
                            const int * node_buffer_ids, const int * leaf_buffer_ids) {
    static reserve_fn real = NULL;
    if (!real) {
        real = (reserve_fn) dlsym(RTLD_NEXT, "ggml_gallocr_reserve_n");
    }
    bool ok = real(galloc, graph, node_buffer_ids, leaf_buffer_ids);
    const char * path = getenv("KVCALC_RESERVE_LOG");
    FILE * f = path ? fopen(path, "a") : NULL;
    if (f) {
        fprintf(f, "%zu\n", ggml_gallocr_get_buffer_size(galloc, 0));
        fclose(f);
    }
    return ok;
}
