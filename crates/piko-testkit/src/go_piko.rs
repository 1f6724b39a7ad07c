//! Piko v0.9.0's own Go programs, built from its source for the interop tests: Piko's `piko`
//! binary (its server and agent) and `interop/piko/cmd/go-sdk` (Piko's Go SDK: `Listen`,
//! `ListenAndForward`, `Dialer`).
//!
//! Piko's module cannot be fetched from the Go module proxy here, so `interop/piko/go.mod`
//! replaces it with a local copy of its source. That copy is found at `$PIKO_GO_SOURCE`, or else
//! at `../shared/third_party/piko-v0.9.0` beside the repository. The build uses a copy of that
//! `go.mod` whose `replace` points at the copy found, so a checkout anywhere works.
//!
//! Without Go or without the source the tests print why and pass, unless
//! `PIKO_REQUIRE_INTEROP=1`, where that is a failure.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// The module path of Piko's Go source.
const PIKO_MODULE: &str = "github.com/andydunstall/piko";

/// The built programs.
#[derive(Debug)]
pub struct GoPiko {
    /// Piko v0.9.0's `piko` binary: `piko server`, `piko agent`.
    pub piko: PathBuf,
    /// `interop/piko/cmd/go-sdk`, a program using Piko's Go `client` package.
    pub sdk: PathBuf,
}

/// The programs, built once per process into `out_dir`; `None` (after printing why) when they
/// cannot be built and interop is optional.
///
/// # Panics
///
/// When they cannot be built and `PIKO_REQUIRE_INTEROP=1`.
pub fn go_piko(out_dir: &Path) -> Option<&'static GoPiko> {
    static BUILT: OnceLock<Result<GoPiko, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build(out_dir)) {
        Ok(built) => Some(built),
        Err(why) if std::env::var("PIKO_REQUIRE_INTEROP").is_ok_and(|v| v == "1") => {
            panic!("interop required (PIKO_REQUIRE_INTEROP=1) but unavailable: {why}")
        }
        Err(why) => {
            eprintln!("skipping a test against Piko's Go module: {why}");
            None
        }
    }
}

/// The repository's `interop/piko` directory.
fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/piko")
}

/// Where Piko's v0.9.0 source is, if anywhere.
fn source_dir() -> Result<PathBuf, String> {
    let candidate = match std::env::var_os("PIKO_GO_SOURCE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/third_party/piko-v0.9.0")
        }
    };
    if candidate.join("go.mod").is_file() {
        candidate
            .canonicalize()
            .map_err(|err| format!("{}: {err}", candidate.display()))
    } else {
        Err(format!(
            "Piko's Go source is not at {} (set PIKO_GO_SOURCE)",
            candidate.display()
        ))
    }
}

fn build(out_dir: &Path) -> Result<GoPiko, String> {
    let source = source_dir()?;
    let module = module_dir();
    let build_dir = out_dir.join("go-piko");
    std::fs::create_dir_all(&build_dir).map_err(|err| format!("{}: {err}", build_dir.display()))?;
    let modfile = build_dir.join("go.mod");
    for name in ["go.mod", "go.sum"] {
        std::fs::copy(module.join(name), build_dir.join(name))
            .map_err(|err| format!("copying interop/piko/{name}: {err}"))?;
    }
    let source = source.to_str().ok_or("the source path is not UTF-8")?;
    let replace = format!("-replace={PIKO_MODULE}={source}");
    go(
        &module,
        &[
            "mod",
            "edit",
            &format!("-modfile={}", modfile.display()),
            &replace,
        ],
    )?;
    go(
        &module,
        &[
            "build",
            &format!("-modfile={}", modfile.display()),
            "-o",
            &format!("{}/", build_dir.display()),
            "./cmd/go-sdk",
            PIKO_MODULE,
        ],
    )?;
    Ok(GoPiko {
        piko: build_dir.join("piko"),
        sdk: build_dir.join("go-sdk"),
    })
}

/// Runs `go args` in `dir`, as CI does: the module files are read, never rewritten.
fn go(dir: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new("go")
        .args(args)
        .current_dir(dir)
        .env("GOFLAGS", "-mod=readonly")
        .env("GOTOOLCHAIN", "local")
        .output()
        .map_err(|err| format!("cannot run go: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "go {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
