//! A small per-thread pool of I/O buffers, so idle connections own no buffer and busy ones reuse them.

use std::cell::RefCell;

/// One TLS record's worth of plaintext: large enough that bulk transfers are not syscall-bound.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept per thread for reuse; beyond this they are freed.
const POOL_MAX: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

pub fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

pub fn give_buf(b: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(b);
        }
    });
}
