/* The program before the exec: spins in its own functions until the file TRIGGER
 * exists, then execs NEXT. Built -no-pie like exec_second, so both map their code at
 * the same addresses with different functions there: a stale module would unwind the
 * new program's frames with the old program's tables. Usage: exec_first TRIGGER NEXT. */
#include <stdio.h>
#include <unistd.h>

static volatile unsigned long sink;

/* Padding so that the functions of the two programs do not line up. */
__attribute__((noinline)) unsigned long before_padding(unsigned long n) {
    unsigned long s = 0;
    for (unsigned long i = 0; i < n; i++) s += i * i ^ (s >> 3);
    for (unsigned long i = 0; i < n; i++) s -= i * 7 ^ (s << 2);
    return s;
}

__attribute__((noinline)) void before_leaf(void) {
    for (unsigned long i = 0; i < 100000; i++) sink += i;
}

__attribute__((noinline)) void before_exec(const char *trigger) {
    while (access(trigger, F_OK) != 0) {
        before_leaf();
        __asm__ volatile("" ::: "memory");
    }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    printf("ready\n");
    fflush(stdout);
    sink += before_padding(argc);
    before_exec(argv[1]);
    char *next[] = {argv[2], NULL};
    execv(argv[2], next);
    perror("execv");
    return 1;
}
