//! A hook that reads the state and does nothing: `cargo xtask bench` runs it at
//! createRuntime and poststop to show what any hook costs a `runc run` (two processes and
//! runc's plumbing around them), apart from the work our hook does.
use std::io::Read;

fn main() {
    let mut state = Vec::new();
    // The state is only drained, as a real hook reads it; its content does not matter.
    let _ = std::io::stdin().read_to_end(&mut state);
}
