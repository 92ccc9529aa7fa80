//! Give back the I/O thread's stack pages that a connect touched.
//!
//! A WebSocket handshake runs deep (tungstenite parses the HTTP response
//! with a ~4 KiB header array on the stack, TLS goes deeper): the I/O thread
//! touches 20–24 KiB of stack while connecting and then idles for hours at
//! a depth of a few hundred bytes. Those pages stay resident and were most
//! of an idle link's memory. On Linux, before a long sleep after a connect,
//! the thread tells the kernel that the pages below its current frame hold
//! nothing (`madvise(MADV_DONTNEED)`); the next deep call gets fresh zeroed
//! pages. Elsewhere this is a no-op.

/// The I/O thread's stack size (the same as Rust's default), set explicitly
/// so that the bounds [`release_below`] relies on are known.
pub(crate) const IO_STACK: usize = 2 << 20;

/// How much below the caller's frame is given back. Deeper than any
/// connect goes; far above the stack's end (checked against [`Top`]).
#[cfg(target_os = "linux")]
const WINDOW: usize = 256 << 10;

/// Where the I/O thread's stack began (an address in its first frame).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Top(#[cfg_attr(not(target_os = "linux"), allow(dead_code))] usize);

impl Top {
    /// Call at the very start of the thread spawned with [`IO_STACK`].
    #[inline(never)]
    pub(crate) fn here() -> Top {
        let marker = 0u8;
        Top(std::hint::black_box(&marker) as *const u8 as usize)
    }
}

/// Release the stack pages below this call's frame (see the module docs).
#[cfg(target_os = "linux")]
#[inline(never)]
pub(crate) fn release_below(top: Top) {
    use std::ffi::{c_int, c_long, c_void};
    #[allow(unsafe_code)]
    unsafe extern "C" {
        fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
        fn sysconf(name: c_int) -> c_long;
    }
    const MADV_DONTNEED: c_int = 4;
    const SC_PAGESIZE: c_int = 30;
    // SAFETY: sysconf only reads a constant.
    #[allow(unsafe_code)]
    let page = match unsafe { sysconf(SC_PAGESIZE) } {
        p if p > 0 && (p as usize).is_power_of_two() => p as usize,
        _ => return,
    };
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    // Keep 1 KiB below this frame (the red zone, madvise's own call).
    let Some(end) = here.checked_sub(1024).map(|a| a & !(page - 1)) else {
        return;
    };
    let Some(start) = end.checked_sub(WINDOW) else {
        return;
    };
    // The whole window must lie inside this thread's stack: the thread began
    // at `top`, its stack spans IO_STACK below (a guard page and a margin
    // for the thread's own bookkeeping left out).
    let depth = top.0.saturating_sub(start);
    if here > top.0 || depth + 64 * 1024 > IO_STACK {
        return;
    }
    // SAFETY: [start, end) is page-aligned, inside this thread's own stack
    // mapping (checked above) and entirely below the live frames: nothing
    // there is in use, and no other thread uses this stack. The kernel maps
    // zeroed pages back in when the thread goes deep again.
    #[allow(unsafe_code)]
    unsafe {
        madvise(start as *mut c_void, WINDOW, MADV_DONTNEED);
    }
}

/// Not Linux: keep the pages.
#[cfg(not(target_os = "linux"))]
pub(crate) fn release_below(_top: Top) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deep stack, released, then deep again: the zeroed pages come back.
    #[test]
    fn released_pages_are_usable_again() {
        std::thread::Builder::new()
            .stack_size(IO_STACK)
            .spawn(|| {
                let top = Top::here();
                fn deep(n: usize) -> u64 {
                    let buf = std::hint::black_box([n as u8; 1024]);
                    if n == 0 {
                        buf.iter().map(|b| u64::from(*b)).sum()
                    } else {
                        deep(n - 1) + u64::from(buf[0])
                    }
                }
                let a = deep(100);
                release_below(top);
                let b = deep(100);
                release_below(top);
                assert_eq!(a, b);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
