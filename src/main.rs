fn main() -> std::process::ExitCode {
    backup::cli::main()
}
