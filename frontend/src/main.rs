//! `frontend`: Public REST front end of Stock Bazaar. Not built yet: this binary only says so.

fn main() -> std::process::ExitCode {
    eprintln!("frontend: not implemented yet in this version of Stock Bazaar");
    std::process::ExitCode::FAILURE
}
