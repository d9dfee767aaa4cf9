//! Where the binaries under test are: the directory in `BAZAAR_BIN_DIR` when it is set, else
//! the profile directory of the running test executable (`target/<profile>`), where
//! `catalog`, `order`, `frontend` and `client` are built once per test process with cargo.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{Error, Result};

/// The environment variable naming a directory of prebuilt binaries; when set, nothing is
/// built.
pub const BIN_DIR_ENV: &str = "BAZAAR_BIN_DIR";

/// The binaries a cluster runs, and the load generator a deployment test drives it with.
pub const BINARIES: [&str; 4] = ["catalog", "order", "frontend", "client"];

static LOCATED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shipped initial catalog, `data/catalog.csv`.
pub fn seed_file() -> PathBuf {
    workspace_root().join("data").join("catalog.csv")
}

/// The directory holding `catalog`, `order`, `frontend` and `client`; the first call builds them
/// unless `BAZAAR_BIN_DIR` is set. Blocks while cargo runs.
pub fn bin_dir() -> Result<PathBuf> {
    LOCATED.get_or_init(locate).clone().map_err(Error::Binaries)
}

/// The path of binary `name` (one of [`BINARIES`]).
pub fn binary(name: &str) -> Result<PathBuf> {
    Ok(bin_dir()?.join(name))
}

fn locate() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let dir = PathBuf::from(dir);
        present(&dir)?;
        eprintln!("chaos: using the binaries in {}", dir.display());
        return Ok(dir);
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in target/<profile>/deps", exe.display()))?
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", profile_dir.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} has no profile name", profile_dir.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root()).arg("build");
    for name in BINARIES {
        command.args(["-p", name]);
    }
    command.arg("--target-dir").arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    eprintln!(
        "chaos: building {BINARIES:?} into {}",
        profile_dir.display()
    );
    let output = command
        .output()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        return Err(format!(
            "cargo build failed ({}):\n{}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    present(&profile_dir)?;
    Ok(profile_dir)
}

fn present(dir: &Path) -> Result<(), String> {
    for name in BINARIES {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(format!("{} is missing", path.display()));
        }
    }
    Ok(())
}
