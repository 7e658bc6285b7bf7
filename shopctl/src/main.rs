//! shopctl's entry point: parse the command line, run it, and turn any error
//! into `error: ...` on stderr and exit status 1 (usage errors: clap's status 2).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = shopctl::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(shopctl::run(cli));
    // Do not hang on a broker call still in flight in a blocking thread.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
