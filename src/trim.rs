//! Hands memory that a burst freed back to the system. glibc keeps freed memory in its
//! arenas, and after a burst of large buffers (a backlog drained, a hundred 1 MiB reports
//! received at once) it is fragmented enough that little of it ever returns by itself: the
//! resident set stays at the burst's peak. `malloc_trim` returns the free pages.

/// Returns the allocator's free pages to the system (glibc; elsewhere nothing to do).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn give_back_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps.
    unsafe {
        malloc_trim(0);
    }
}

/// Returns the allocator's free pages to the system (glibc; elsewhere nothing to do).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_back_memory() {}
