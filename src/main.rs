#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    backup::cli::main()
}
