//! The `tokenbox` command line: parses the arguments and calls the library
//! ([`tokenbox::cli::run`], which loads the configuration and sets up logging).

use std::process::ExitCode;

use clap::Parser;

use tokenbox::cli::Cli;

/// mimalloc instead of the system allocator: the hot path allocates small, short-lived
/// buffers on every request, and glibc's malloc spent a sixth of its time there
/// (`bench/RESULTS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokenbox: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tokenbox::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tokenbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}
