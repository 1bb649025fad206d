//! The agent's checkpoint files, read back after a restart (`agent/src/checkpoint.rs`, the
//! run directory files of `agent/src/containerizer/supervisor`): the input's first byte picks
//! the file, the rest is its content, written to a scratch work dir and loaded as recovery
//! loads it. Loading never panics, and what loads saves and loads back the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use strata_agent::checkpoint;
use strata_agent::containerizer::supervisor::{self, TaskSpec};

#[path = "../common/scratch.rs"]
mod scratch;
use scratch::scratch;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, content)) = data.split_first() else {
        return;
    };
    let dir = scratch();
    match kind % 6 {
        0 => {
            std::fs::write(dir.join(checkpoint::AGENT_ID_FILE), content).expect("write");
            if let Ok(Some(id)) = checkpoint::load_agent_id(dir) {
                checkpoint::save_agent_id(dir, &id).expect("save");
                let back = checkpoint::load_agent_id(dir).expect("a saved id loads");
                assert_eq!(back.as_deref(), Some(id.as_str()));
            }
        }
        1 => {
            std::fs::write(dir.join(checkpoint::TASK_FILE), content).expect("write");
            if let Ok(Some(task)) = checkpoint::load_task(dir, "t") {
                checkpoint::save_task(dir, &task).expect("save");
                let back = checkpoint::load_task(dir, "t")
                    .expect("a saved task loads")
                    .expect("and is there");
                // Lengths, not bytes: map fields (labels) encode in hash order.
                assert_eq!(back.encoded_len(), task.encoded_len());
            }
        }
        2 => {
            std::fs::write(dir.join(checkpoint::UPDATES_FILE), content).expect("write");
            if let Ok(Some((latest, pending))) = checkpoint::load_updates(dir, "f", "t") {
                checkpoint::save_updates(dir, &latest, &pending).expect("save");
                let (l, p) = checkpoint::load_updates(dir, "f", "t")
                    .expect("saved updates load")
                    .expect("and are there");
                assert_eq!(l.encoded_len(), latest.encoded_len());
                assert_eq!(p.len(), pending.len());
            }
        }
        3 => {
            std::fs::write(dir.join(supervisor::SPEC_FILE), content).expect("write");
            if let Ok(spec) = TaskSpec::read(dir) {
                spec.write(dir).expect("save");
                let back = TaskSpec::read(dir).expect("a saved spec loads");
                assert_eq!(back, spec);
            }
        }
        4 => {
            // `<pid> <start time>`, checked against the live process of that pid.
            std::fs::write(dir.join(supervisor::SUPERVISOR_PID_FILE), content).expect("write");
            let _ = supervisor::running_supervisor(dir);
        }
        _ => {
            let path = dir.join(supervisor::EXIT_FILE);
            std::fs::write(&path, content).expect("write");
            if let Some(status) = supervisor::read_exit(&path) {
                let text = supervisor::format_exit(status);
                assert_eq!(supervisor::parse_exit(&text), Some(status));
            }
        }
    }
});
