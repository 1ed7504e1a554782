//! glibc allocator settings for tensor workloads.
//!
//! burn allocates a fresh buffer for nearly every tensor op and frees it soon after. glibc
//! serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with `mmap` and
//! returns them with `munmap` on free, so every large intermediate is faulted in page by page
//! and zeroed by the kernel again: a perf profile of `invert train` (small model, 256 px) spent
//! 20% of its samples in page faults (9.9 M faults in 25 steps). Keeping freed blocks in the
//! heap for reuse removed 95% of the faults and made a training step 1.2x to 1.55x faster
//! (docs/PERFORMANCE.md, training section), at a few percent more peak RSS.

/// Blocks of up to this size come from the heap (and are reused) instead of fresh mappings.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the top of the heap kept before returning it to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 1 << 30;
/// Extra memory requested each time the heap grows.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: i32 = 64 << 20;

/// Applies the settings above (glibc on Linux; elsewhere nothing). Call once at start-up,
/// before large allocations. `INVERT_DEFAULT_MALLOC=1` skips it (for comparisons).
/// Returns whether the settings were applied.
pub fn tune_for_tensors() -> bool {
    if std::env::var_os("INVERT_DEFAULT_MALLOC").is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_are_accepted() {
        let applied = super::tune_for_tensors();
        if cfg!(all(target_os = "linux", target_env = "gnu"))
            && std::env::var_os("INVERT_DEFAULT_MALLOC").is_none()
        {
            assert!(applied, "glibc refused the allocator settings");
        }
        // Allocations still work after the change.
        let v = vec![1u8; 40 << 20];
        assert_eq!(v[v.len() - 1], 1);
    }
}
