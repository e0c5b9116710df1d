/* A JIT frame between native frames: native_caller calls, in a loop, a function
 * written at run time into an anonymous executable page (jitted_trampoline, with a
 * frame-pointer prologue, as JIT compilers emit), which calls back into the native
 * hot_native. The page is named in /tmp/perf-PID.map, as JIT runtimes do.
 * Usage: jit (prints "ready" and runs until killed). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile unsigned long sink;

__attribute__((noinline)) void hot_native(void) {
    for (unsigned long i = 0; i < 200000; i++) sink += i;
}

__attribute__((noinline)) void native_caller(void (*jitted)(void)) {
    for (;;) {
        jitted();
        __asm__ volatile("" ::: "memory");
    }
}

int main(void) {
    unsigned char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    uint64_t target = (uint64_t)(uintptr_t)hot_native;
    unsigned char code[] = {
        0x55,                         /* push rbp */
        0x48, 0x89, 0xe5,             /* mov rbp, rsp */
        0x48, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, /* movabs rax, hot_native */
        0xff, 0xd0,                   /* call rax */
        0x5d,                         /* pop rbp */
        0xc3,                         /* ret */
    };
    memcpy(code + 6, &target, sizeof target);
    memcpy(page, code, sizeof code);

    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", (int)getpid());
    FILE *map = fopen(path, "w");
    if (!map) {
        perror(path);
        return 1;
    }
    fprintf(map, "%lx %zx jitted_trampoline\n", (unsigned long)(uintptr_t)page, sizeof code);
    fclose(map);

    printf("ready\n");
    fflush(stdout);
    native_caller((void (*)(void))page);
    return 0;
}
