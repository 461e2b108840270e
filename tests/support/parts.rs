//! Where the third-party parts that `tests/run` installs are: the variable `tests/run` exports, else the
//! cache folder it fills (so a plain `cargo test` works after one `tests/run`). A missing part fails the
//! test with one line naming it and the command that installs it; no test skips.

use std::path::PathBuf;

/// `tests/run`'s cache: `$XDG_CACHE_HOME/gatehouse`, else `$HOME/.cache/gatehouse`, else
/// `/var/tmp/.cache/gatehouse`, as the script computes it.
pub fn cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/tmp"))
                .join(".cache")
        })
        .join("gatehouse")
}

/// The folder of one part: `env` when set, else `cached` under the cache. Panics with one line naming
/// `what` when `probe` (a file inside the folder) is not there.
pub fn folder(env: &str, cached: &str, probe: &str, what: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join(cached))
        .canonicalize()
        .ok()
        .filter(|d| d.join(probe).is_file())
        .unwrap_or_else(|| panic!("{what} is missing: run tests/run (the README's test command), which installs it"))
}

/// xrpl-py (PyPI) and its dependencies, installed with `pip install --target`: the folder to put on
/// PYTHONPATH.
pub fn xrpl_py() -> PathBuf {
    folder(
        "GATEHOUSE_XRPL_PY",
        "pylib-xrpl-py-5.2.0",
        "xrpl/__init__.py",
        "xrpl-py (PyPI)",
    )
}

/// xrpl.js (npm package `xrpl`), installed with `npm install --prefix`: the folder whose `node_modules`
/// holds it.
pub fn xrpl_js() -> PathBuf {
    folder(
        "GATEHOUSE_XRPL_JS",
        "npm-xrpl-5.3.0",
        "node_modules/xrpl/package.json",
        "xrpl.js (npm xrpl)",
    )
}
