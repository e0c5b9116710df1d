//! A Rust program built with default release flags (no frame pointers): the main
//! thread and a spawned one each run worker_main -> slow_path -> hash_block ->
//! mix_leaf in a loop, until killed.

use std::hint::black_box;

#[inline(never)]
fn mix_leaf(data: &[u64]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in data {
        h = (h ^ x).wrapping_mul(0x100_0000_01b3).rotate_left(5);
    }
    h
}

#[inline(never)]
fn hash_block(data: &[u64]) -> u64 {
    let h = mix_leaf(black_box(data));
    black_box(h).wrapping_add(1)
}

#[inline(never)]
fn slow_path(data: &[u64]) -> u64 {
    let h = hash_block(black_box(data));
    black_box(h).wrapping_add(2)
}

#[inline(never)]
fn worker_main() {
    let data: Vec<u64> = (0..4096u64).collect();
    let mut sink = 0u64;
    loop {
        sink = sink.wrapping_add(slow_path(black_box(&data)));
        black_box(sink);
    }
}

fn main() {
    let _spawned = std::thread::spawn(worker_main);
    println!("ready");
    worker_main();
}
