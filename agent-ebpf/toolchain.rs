//! Reads `toolchain.toml` beside this file: the eBPF build's toolchain pins; and names the
//! variable that makes a build require the real eBPF programs ([`REQUIRE_ENV`]).
//!
//! Not part of the eBPF crate: `agent/build.rs` and xtask (`cargo xtask setup`, `cargo xtask
//! test`) include it with `#[path]`, so both read the pins the same way. A line parser, not a
//! TOML library: the build script stays free of dependencies for it.

use std::path::{Path, PathBuf};

/// The pins file's name, in the eBPF crate's directory.
pub const PINS_FILE: &str = "toolchain.toml";

/// Set (to anything but empty, `0` or `false`), agent/build.rs fails, naming what is missing,
/// rather than embed empty placeholder objects when the eBPF toolchain is missing. Every cargo
/// that xtask runs sets it.
pub const REQUIRE_ENV: &str = "STRATA_REQUIRE_EBPF";

/// The eBPF build's toolchain pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    /// The bpf-linker release (`cargo install --locked bpf-linker@VERSION`).
    pub bpf_linker: String,
    /// The LLVM major version that bpf-linker works with (the nightly's `rustc -vV`).
    pub llvm_major: String,
    /// The dated nightly used when `nightly` has another LLVM.
    pub nightly_pin: String,
}

impl Pins {
    /// The pins file of the eBPF crate at `ebpf_dir`.
    pub fn path(ebpf_dir: &Path) -> PathBuf {
        ebpf_dir.join(PINS_FILE)
    }

    /// Reads the pins file of the eBPF crate at `ebpf_dir`.
    pub fn read(ebpf_dir: &Path) -> Result<Self, String> {
        let path = Self::path(ebpf_dir);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses `key = "value"` lines; blank lines and `#` comments are skipped. Every key must be
    /// known and present once.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (mut bpf_linker, mut llvm_major, mut nightly_pin) = (None, None, None);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = n + 1;
            let (key, rest) = line
                .split_once('=')
                .ok_or_else(|| format!("line {n}: expected `key = \"value\"`, found `{line}`"))?;
            let value = rest
                .trim()
                .strip_prefix('"')
                .and_then(|v| v.split_once('"'))
                .filter(|(v, after)| {
                    !v.is_empty() && {
                        let after = after.trim();
                        after.is_empty() || after.starts_with('#')
                    }
                })
                .map(|(v, _)| v.to_owned())
                .ok_or_else(|| format!("line {n}: expected a non-empty \"quoted\" value"))?;
            let slot = match key.trim() {
                "bpf-linker" => &mut bpf_linker,
                "llvm-major" => &mut llvm_major,
                "nightly-pin" => &mut nightly_pin,
                other => return Err(format!("line {n}: unknown key `{other}`")),
            };
            if slot.replace(value).is_some() {
                return Err(format!("line {n}: `{}` is set twice", key.trim()));
            }
        }
        let missing = |key: &str| format!("`{key}` is not set");
        Ok(Self {
            bpf_linker: bpf_linker.ok_or_else(|| missing("bpf-linker"))?,
            llvm_major: llvm_major.ok_or_else(|| missing("llvm-major"))?,
            nightly_pin: nightly_pin.ok_or_else(|| missing("nightly-pin"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_pins_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-ebpf");
        let pins = Pins::read(&dir).expect("agent-ebpf/toolchain.toml parses");
        assert_eq!(pins.bpf_linker.split('.').count(), 3, "{pins:?}");
        assert!(pins.llvm_major.parse::<u32>().is_ok(), "{pins:?}");
        assert!(pins.nightly_pin.starts_with("nightly-20"), "{pins:?}");
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let pins = Pins::parse(
            "# pins\n\nbpf-linker = \"0.10.4\"  # a comment\n  llvm-major=\"22\"\n\
             nightly-pin = \"nightly-2026-05-19\"\n",
        )
        .expect("parses");
        assert_eq!(
            pins,
            Pins {
                bpf_linker: "0.10.4".to_owned(),
                llvm_major: "22".to_owned(),
                nightly_pin: "nightly-2026-05-19".to_owned(),
            }
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_line() {
        let all = "bpf-linker = \"1\"\nllvm-major = \"2\"\nnightly-pin = \"n\"\n";
        let err = |text: &str| Pins::parse(text).expect_err(text);
        assert!(err("bpf-linker = \"1\"\n").contains("`llvm-major` is not set"));
        assert!(err(&format!("{all}llvm = \"3\"\n")).contains("line 4: unknown key `llvm`"));
        assert!(err(&format!("{all}llvm-major = \"3\"\n")).contains("set twice"));
        assert!(err("bpf-linker = 0.10.4\n").contains("line 1: expected a non-empty"));
        assert!(err("bpf-linker = \"\"\n").contains("non-empty"));
        assert!(err("bpf-linker = \"1\" x\n").contains("quoted"));
        assert!(err("[ebpf]\n").contains("line 1: expected `key = \"value\"`"));
    }
}
