//! The `tickstream` binary; everything it does lives in the library.

#[cfg(all(feature = "jemalloc", feature = "mimalloc"))]
compile_error!("features `jemalloc` and `mimalloc` each choose the global allocator: enable one");

/// Built with `--features jemalloc`: jemalloc, which hands memory freed by any thread
/// back to the OS on its own schedule.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Built with `--features mimalloc`: mimalloc.
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tickstream::cli::run()
}
