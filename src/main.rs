//! The `tickstream` binary; everything it does lives in the library.

/// jemalloc, the default (feature `jemalloc`): of the three allocators measured by a
/// stall storm it gave the most memory back after it (bench/RESULTS.md, row
/// `storm-allocators`): jemalloc hands memory freed by any thread back to the OS on
/// its own schedule, where glibc's malloc kept it.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Built with `--features mimalloc`: mimalloc (it takes precedence over the default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tickstream::cli::run()
}
