//! `client`: Load generator and checker for Stock Bazaar. Not built yet: this binary only says so.

fn main() -> std::process::ExitCode {
    eprintln!("client: not implemented yet in this version of Stock Bazaar");
    std::process::ExitCode::FAILURE
}
