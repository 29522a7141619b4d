//! What the programs run inside qemu guests share (`kernel-guest`, `node-guest`): results
//! written to the guest's second serial port, one JSON object per line,
//! `{"check": NAME, "ok": BOOL, "detail": TEXT}`, ended by `{"done": true}`.
use std::io::Write;

pub struct Results {
    out: std::fs::File,
}

impl Results {
    /// Results written to `port` (e.g. /dev/ttyS1).
    pub fn open(port: &str) -> Self {
        Self {
            out: std::fs::OpenOptions::new()
                .write(true)
                .open(port)
                .unwrap_or_else(|e| panic!("results port {port}: {e}")),
        }
    }

    /// Writes one line.
    pub fn line(&mut self, value: serde_json::Value) {
        let _ = writeln!(self.out, "{value}");
        let _ = self.out.flush();
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.line(serde_json::json!({"check": name, "ok": ok, "detail": detail.into()}));
    }

    /// [`Self::run`] when `cond` holds.
    pub fn run_if(&mut self, cond: bool, name: &str, f: impl FnOnce() -> Result<String, String>) {
        if cond {
            self.run(name, f);
        }
    }

    /// Runs one check; a panic inside (a fixture's failed command) is a failed check.
    /// Returns whether it passed.
    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Result<String, String>) -> bool {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(detail)) => {
                self.check(name, true, detail);
                true
            }
            Ok(Err(detail)) => {
                self.check(name, false, detail);
                false
            }
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.check(name, false, format!("panicked: {text}"));
                false
            }
        }
    }

    /// Marks the run complete.
    pub fn done(&mut self) {
        self.line(serde_json::json!({"done": true}));
    }
}

/// `Ok` when `got` and `want` print alike, else an error naming `what`.
pub fn expect(
    what: &str,
    got: impl std::fmt::Debug,
    want: impl std::fmt::Debug,
) -> Result<(), String> {
    let (g, w) = (format!("{got:?}"), format!("{want:?}"));
    if g == w {
        Ok(())
    } else {
        Err(format!("{what}: got {g}, want {w}"))
    }
}
