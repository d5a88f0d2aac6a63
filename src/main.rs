fn main() {
    std::process::exit(opslet::cli::main());
}
