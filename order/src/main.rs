//! `order`: Replicated order log of Stock Bazaar. Not built yet: this binary only says so.

fn main() -> std::process::ExitCode {
    eprintln!("order: not implemented yet in this version of Stock Bazaar");
    std::process::ExitCode::FAILURE
}
