/* Recursion 1000 levels deep (built -fomit-frame-pointer -fno-optimize-sibling-calls),
 * spinning at the bottom until killed. */
#include <stdio.h>

static volatile int stop;
static volatile int sink;

__attribute__((noinline)) int recurse(int n) {
    if (n == 0) {
        printf("ready\n");
        fflush(stdout);
        while (!stop) sink++;
        return 0;
    }
    int r = recurse(n - 1);
    sink = r;
    return r + 1;
}

int main(void) { return recurse(1000); }
