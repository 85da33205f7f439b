fn main() -> std::process::ExitCode {
    lazypull::cli::main()
}
