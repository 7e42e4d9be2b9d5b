//! avr-core: bridges Asterisk AudioSocket calls to speech-to-speech agents over WebSocket.
//!
//! The folders follow the data paths (docs/ARCHITECTURE.md):
//! - [`proto`]: the wire formats, no sockets (AudioSocket frames, G.711, STS messages);
//! - [`audio`]: signal processing both directions share (sample-rate conversion);
//! - [`call`]: one call, from the AudioSocket listener to its end;
//! - [`agent`]: the agent side of a call in STS mode (the WebSocket);
//! - [`pipeline`]: the agent side in pipeline mode (speech-to-text, language model,
//!   text-to-speech over HTTP);
//! - [`playout`]: the agent's audio on its way to the caller, and the 20 ms clocks;
//! - [`http`]: `/health`, `/call`, `/metrics`; [`registry`]: `/call` metadata waiting for
//!   its call; [`webhook`]: the events;
//! - [`config`], [`metrics`], [`sys`], [`time`]: what every path shares; [`cli`]: the
//!   command-line reader of every subcommand;
//! - [`tools`]: what ships beside the product (simulator, echo agent, demo).
//!
//! `main.rs` wires these together; `tests/` and `benches/` drive the same code.

pub mod agent;
pub mod audio;
pub mod call;
pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod playout;
pub mod proto;
pub mod registry;
pub mod sys;
pub mod time;
pub mod tools;
pub mod webhook;

#[cfg(test)]
pub(crate) mod alloc_count;

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

/// The layering of docs/ARCHITECTURE.md §3, checked on the source: each folder names the
/// modules it may use, so an import that runs back up (or closes a circle) fails here, not
/// in a reviewer's head. Comments are skipped; `main.rs`, `benches/` and `tests/` may use
/// anything.
#[cfg(test)]
mod layering {
    use std::path::Path;

    /// (module, the other modules of this crate it may use). Lower layers first.
    const RULES: &[(&str, &[&str])] = &[
        ("time", &[]),
        ("metrics", &[]),
        ("cli", &[]),
        ("sys", &[]),
        ("proto", &["time"]),
        ("audio", &[]),
        ("config", &["proto"]),
        ("registry", &["sys"]),
        ("agent", &["proto", "sys"]),
        ("playout", &["audio", "proto", "sys"]),
        ("pipeline", &["audio", "config", "proto", "sys"]),
        (
            "webhook",
            &["cli", "config", "metrics", "proto", "sys", "time"],
        ),
        ("http", &["config", "metrics", "proto", "registry", "sys"]),
        (
            "call",
            &[
                "agent", "audio", "config", "metrics", "pipeline", "playout", "proto", "registry",
                "sys", "webhook",
            ],
        ),
        ("tools", &["audio", "cli", "http", "proto", "sys"]),
    ];

    /// Modules that exist only in test builds, which any module's tests may use.
    const TEST_ONLY: &[&str] = &["alloc_count"];

    fn sources(path: &Path, out: &mut Vec<(String, String)>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                sources(&entry.unwrap().path(), out);
            }
        } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(path).unwrap();
            out.push((path.display().to_string(), text));
        }
    }

    /// The `crate::x` modules `text` uses outside comments.
    fn uses(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        }
        found
    }

    #[test]
    fn no_module_uses_one_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut broken = Vec::new();
        for (module, allowed) in RULES {
            let mut files = Vec::new();
            let dir = src.join(module);
            sources(&dir, &mut files);
            sources(&dir.with_extension("rs"), &mut files);
            assert!(!files.is_empty(), "no source for module {module}");
            for (file, text) in &files {
                for used in uses(text) {
                    // Test-only instruments, below every layer.
                    if TEST_ONLY.contains(&used.as_str()) {
                        continue;
                    }
                    if used != *module && !allowed.contains(&used.as_str()) {
                        broken.push(format!("{file} uses crate::{used}"));
                    }
                }
            }
        }
        assert!(
            broken.is_empty(),
            "imports against the layering:\n{}",
            broken.join("\n")
        );
    }

    #[test]
    fn every_module_has_a_rule() {
        let lib = include_str!("lib.rs");
        for line in lib.lines().filter(|l| l.starts_with("pub mod ")) {
            let name = line.trim_start_matches("pub mod ").trim_end_matches(';');
            assert!(
                RULES.iter().any(|(m, _)| *m == name),
                "module {name} has no layering rule"
            );
        }
    }

    #[test]
    fn the_check_sees_an_import() {
        assert_eq!(uses("use crate::call::x; // crate::http"), vec!["call"]);
    }
}
