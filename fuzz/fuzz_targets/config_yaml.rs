//! Arbitrary bytes through the `piko` binary's config file loader (`config_file::load`) into the
//! server's, the agent's and `piko forward`'s file types.
//!
//! The loader lives in the binary crate, which a fuzz crate cannot depend on; the file (with
//! the two modules it uses, `duration` and `expand_env`) compiles on its own, so it is included
//! here verbatim by path rather than moved.
//!
//! Input: one options byte (bit 0: expand environment references first, as
//! `--config.expand-env` does; bits 1-2: which file type), then the file's bytes.
//!
//! Checks: no panic (deep nesting, odd durations, huge numbers, non-UTF-8 included); every
//! failure is an error that names the file.

#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../crates/piko-cli/src/config_file.rs"]
mod config_file;
#[allow(dead_code, unreachable_pub)]
#[path = "../../crates/piko-cli/src/duration.rs"]
mod duration;
#[allow(dead_code, unreachable_pub)]
#[path = "../../crates/piko-cli/src/expand_env.rs"]
mod expand_env;

use std::{path::PathBuf, sync::OnceLock};

use config_file::{AgentFile, ForwardFile, ServerFile};
use libfuzzer_sys::fuzz_target;

/// The file the loader reads: one per process, rewritten for each input.
fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // A variable for `${FUZZ_VAR}` references to find.
        // SAFETY: set once, before anything else in this process reads the environment.
        unsafe { std::env::set_var("FUZZ_VAR", "10s") };
        std::env::temp_dir().join(format!("piko-fuzz-config-{}.yaml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&options, file)) = data.split_first() else {
        return;
    };
    let path = config_path();
    std::fs::write(path, file).expect("the temporary file is writable");
    let expand = options & 0x1 != 0;
    let error = match (options >> 1) % 3 {
        0 => config_file::load::<ServerFile>(path, expand).err(),
        1 => config_file::load::<AgentFile>(path, expand).err(),
        _ => config_file::load::<ForwardFile>(path, expand).err(),
    };
    if let Some(error) = error {
        let message = error.to_string();
        let names_file = message.contains(&*path.to_string_lossy());
        assert!(
            names_file,
            "an error that does not name the file: {message}"
        );
    }
});
