/* Spins in its own code until the file TRIGGER exists, then dlopens LIBRARY and calls
 * its hot_outer in a loop. Usage: dlopener LIBRARY TRIGGER (runs until killed). */
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) void spin_main(void) {
    for (volatile long i = 0; i < 100000; i++) {}
}

__attribute__((noinline)) void call_library(void (*hot_outer)(void)) {
    for (;;) {
        hot_outer();
        __asm__ volatile("" ::: "memory");
    }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    printf("ready\n");
    fflush(stdout);
    while (access(argv[2], F_OK) != 0) spin_main();
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    void (*hot_outer)(void) = (void (*)(void))dlsym(lib, "hot_outer");
    if (!hot_outer) return 1;
    printf("loaded\n");
    fflush(stdout);
    call_library(hot_outer);
    return 0;
}
