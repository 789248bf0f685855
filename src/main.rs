//! The `tickstream` binary; everything it does lives in the library.

fn main() -> std::process::ExitCode {
    tickstream::cli::run()
}
