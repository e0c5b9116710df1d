/* The program after the exec (see exec_first.c): prints "exec'd", then runs
 * main -> after_exec_outer -> after_exec_leaf until killed. */
#include <stdio.h>

static volatile unsigned long sink;

__attribute__((noinline)) void after_exec_leaf(void) {
    for (unsigned long i = 0; i < 100000; i++) sink += i * 3;
}

__attribute__((noinline)) void after_exec_outer(void) {
    for (;;) {
        after_exec_leaf();
        __asm__ volatile("" ::: "memory");
    }
}

int main(void) {
    printf("exec'd\n");
    fflush(stdout);
    after_exec_outer();
    return 0;
}
