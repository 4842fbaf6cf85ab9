/* Quantises little-endian f32 values with ggml's own IQ4_NL / IQ4_XS quantisers (no importance
 * matrix, as llama-quantize runs them), for kiln's quantiser tests. Built and run by
 * gen_iq4_quantize_vectors.sh against the anchor llama.cpp build's libggml-base.a.
 *
 *   ggml_iq4_quantize IN.f32 N_PER_ROW OUT_NL OUT_XS
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

size_t quantize_iq4_nl(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix);
size_t quantize_iq4_xs(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix);

static void put(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) { perror(path); exit(1); }
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s IN.f32 N_PER_ROW OUT_NL OUT_XS\n", argv[0]); return 2; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    int64_t n = bytes / 4, per_row = atoll(argv[2]);
    float *x = malloc(bytes);
    if (fread(x, 4, n, f) != (size_t)n) { perror("read"); return 1; }
    fclose(f);
    void *out = malloc(bytes); /* either type takes fewer bytes than the f32 input */
    put(argv[3], out, quantize_iq4_nl(x, out, n / per_row, per_row, NULL));
    put(argv[4], out, quantize_iq4_xs(x, out, n / per_row, per_row, NULL));
    return 0;
}
