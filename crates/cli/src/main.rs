//! The `bulkhead` binary: `bulkhead serve` runs the control plane; every
//! other command is a client of a running one.

/// `print!`/`outln!` for results. A reader that stops early
/// (`bulkhead tenants list | head -1`) ends the command quietly, where std's
/// macros would panic on the closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
}
macro_rules! outln {
    ($($arg:tt)*) => { out!("{}\n", format_args!($($arg)*)) };
}

mod args;
mod client;
mod commands;
mod env;
mod exit;
mod output;
mod settings;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The runtime's sandbox helper is this binary run again: it must start
    // before anything else (no async runtime, no threads).
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == bulkhead_runtime::sandbox::HELPER_ARG) {
        return bulkhead_runtime::sandbox::helper_main(&args[1..]);
    }
    let cli = args::Cli::parse();
    let json = cli.global.output == args::Output::Json;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        // A reader that closed the pipe stopped early on purpose; any other
        // failure to print fails the command.
        Ok(code) => match output::stdout_error() {
            Some(kind) if kind != std::io::ErrorKind::BrokenPipe => {
                eprintln!("error: cannot write to standard output: {}", std::io::Error::from(kind));
                ExitCode::FAILURE
            }
            _ => code,
        },
        Err(error) => {
            if json {
                // Scripts asked for JSON: the error too, on standard error.
                eprintln!("{}", error.to_json());
            } else {
                eprintln!("error: {error}");
            }
            error.exit_code()
        }
    }
}
