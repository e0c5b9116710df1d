/* A library the dlopen test loads after profiling started (built -fomit-frame-pointer,
 * -shared -fPIC): hot_outer -> hot_inner. */
volatile long hot_sink;

__attribute__((noinline)) long hot_inner(long n) {
    long s = 0;
    for (volatile long i = 0; i < n; i++) s += i * 3;
    return s;
}

__attribute__((noinline)) void hot_outer(void) {
    long v = hot_inner(200000);
    hot_sink = v;
}
