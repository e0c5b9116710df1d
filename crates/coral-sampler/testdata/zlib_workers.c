/* Worker threads that spend their time in zlib (Debian's libz: no frame pointers):
 * worker_main -> slow_path -> compress_block -> compress2, in a loop. Built by the
 * tests with -fomit-frame-pointer (callers found only through .eh_frame) or with
 * -fno-omit-frame-pointer (frame pointers in this binary only). Runs until killed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <zlib.h>

#define WORKERS 3

static unsigned char input[1 << 16];

/* The empty asm after each call keeps it from being a tail call (which would drop the
 * caller from the stack). */
__attribute__((noinline)) int compress_block(unsigned char *out, uLongf *out_len, int level) {
    int rc = compress2(out, out_len, input, sizeof input, level);
    __asm__ volatile("" ::: "memory");
    return rc;
}

__attribute__((noinline)) int slow_path(unsigned char *out, int level) {
    uLongf len = compressBound(sizeof input);
    int rc = compress_block(out, &len, level);
    __asm__ volatile("" ::: "memory");
    return rc + (int)len;
}

__attribute__((noinline)) void *worker_main(void *arg) {
    unsigned char *out = malloc(compressBound(sizeof input));
    volatile long sink = 0;
    for (;;) sink += slow_path(out, 6);
    return arg;
}

int main(void) {
    unsigned seed = 1;
    for (size_t i = 0; i < sizeof input; i++) input[i] = 'a' + rand_r(&seed) % 16;
    pthread_t threads[WORKERS];
    for (int i = 0; i < WORKERS; i++) pthread_create(&threads[i], NULL, worker_main, NULL);
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < WORKERS; i++) pthread_join(threads[i], NULL);
    return 0;
}
