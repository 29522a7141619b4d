//! apt as setup uses it: packages installed on this machine or inside a root (the
//! setup-closure suite's fresh Debian root, through `chroot`, by the same code), and private
//! configurations (their own sources, lists and cache) for downloads from other suites, so the
//! machine's own sources stay as they are. The archive's URIs always come from the machine's
//! own apt sources: none is written here.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Result, output, run};

/// Where packages go: this machine, or a Debian root entered with `chroot`.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Host,
    Root(&'a Path),
}

impl Target<'_> {
    /// `program` run on the target.
    pub fn command(self, program: &str) -> Command {
        match self {
            Target::Host => Command::new(program),
            Target::Root(root) => {
                let mut cmd = Command::new("chroot");
                cmd.arg(root).arg(program);
                cmd
            }
        }
    }

    /// `program` run on the target in `dir` (a path as the target sees it).
    pub fn command_in(self, program: &str, dir: &Path) -> Command {
        match self {
            Target::Host => {
                let mut cmd = Command::new(program);
                cmd.current_dir(dir);
                cmd
            }
            // chroot(1) starts in the new root's /.
            Target::Root(_) => {
                let mut cmd = self.command("sh");
                cmd.args(["-c", "cd \"$0\" && exec \"$@\""])
                    .arg(dir)
                    .arg(program);
                cmd
            }
        }
    }

    /// Where a path the target sees is on this machine.
    pub fn host_path(self, path: &Path) -> PathBuf {
        match self {
            Target::Host => path.to_path_buf(),
            Target::Root(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        }
    }

    pub fn installed(self, package: &str) -> bool {
        self.command("dpkg-query")
            .args(["-W", "-f=${db:Status-Status}", package])
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
    }

    /// Installs `packages` (no recommends) after one `apt-get update`.
    pub fn install(self, packages: &[&str]) -> Result {
        run(self.command("apt-get").args(["update", "-qq"]))?;
        run(self
            .command("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    }
}

/// The Debian archive this machine's apt uses, read from its sources.
#[derive(Clone, Debug)]
pub struct Mirror {
    /// The main archive (the suite of this release).
    pub archive: String,
    /// The security archive, if the machine uses one.
    pub security: Option<String>,
}

impl Mirror {
    /// From `/etc/apt/sources.list.d/*.sources` (deb822) and `/etc/apt/sources.list`
    /// (one-line format): the URI whose suites include this release's codename, and the one
    /// with `CODENAME-security`.
    pub fn of_this_machine() -> Result<Mirror> {
        let codename = codename()?;
        let mut entries = Vec::new();
        let dir = Path::new("/etc/apt/sources.list.d");
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            match file.extension().and_then(|x| x.to_str()) {
                Some("sources") => entries.extend(deb822_entries(&text)),
                Some("list") => entries.extend(one_line_entries(&text)),
                _ => {}
            }
        }
        let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
        entries.extend(one_line_entries(&list));
        let find = |suite: &str| {
            entries
                .iter()
                .find(|(_, suites)| suites.iter().any(|s| s == suite))
                .map(|(uri, _)| uri.clone())
        };
        let archive = find(&codename).ok_or_else(|| {
            format!("no apt source of this machine serves {codename} (/etc/apt/sources.list*)")
        })?;
        Ok(Mirror {
            archive,
            security: find(&format!("{codename}-security")),
        })
    }

    /// A deb822 sources file for `suites` of the main archive (`types`: `deb`, `deb-src`),
    /// with the security archive's `SUITE-security` when the machine has one and `security`.
    pub fn sources(&self, types: &str, suites: &[&str], security: bool) -> String {
        let keyring = "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg";
        let mut text = format!(
            "Types: {types}\nURIs: {}\nSuites: {}\nComponents: main\n{keyring}\n",
            self.archive,
            suites.join(" ")
        );
        if let (true, Some(uri)) = (security, &self.security) {
            let suites: Vec<String> = suites
                .iter()
                .filter(|s| !s.contains('-'))
                .map(|s| format!("{s}-security"))
                .collect();
            text += &format!(
                "\nTypes: {types}\nURIs: {uri}\nSuites: {}\nComponents: main\n{keyring}\n",
                suites.join(" ")
            );
        }
        text
    }
}

/// This machine's release codename (`VERSION_CODENAME` in /etc/os-release).
pub fn codename() -> Result<String> {
    let text =
        std::fs::read_to_string("/etc/os-release").map_err(|e| format!("os-release: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| "/etc/os-release names no VERSION_CODENAME".into())
}

/// `(URI, suites)` of each `deb` stanza of a deb822 file.
fn deb822_entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let enabled = field("Enabled").is_none_or(|v| v != "no");
        if let (true, true, Some(uris), Some(suites)) =
            (is_deb, enabled, field("URIs"), field("Suites"))
        {
            let suites: Vec<String> = suites.split_whitespace().map(String::from).collect();
            for uri in uris.split_whitespace() {
                out.push((uri.to_string(), suites.clone()));
            }
        }
    }
    out
}

/// `(URI, [suite])` of each `deb` line of a one-line sources file.
fn one_line_entries(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let rest = l.strip_prefix("deb ")?.trim();
            // Options in brackets come first: `deb [signed-by=...] URI SUITE COMPONENTS`.
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?.1.trim(),
                None => rest,
            };
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_string();
            let suite = words.next()?.to_string();
            Some((uri, vec![suite]))
        })
        .collect()
}

/// A private apt configuration in `dir`: its own sources, lists and cache, no dpkg status
/// (nothing is installed through it), downloads as root (no _apt sandbox user in a root-only
/// directory).
pub struct Private {
    dir: PathBuf,
}

impl Private {
    /// Creates `dir`'s layout with `sources` (deb822) and runs `apt-get update`.
    pub fn new(dir: &Path, sources: &str) -> Result<Private> {
        for sub in ["sources", "lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("{}: {e}", dir.join(sub).display()))?;
        }
        std::fs::write(dir.join("sources/private.sources"), sources)
            .map_err(|e| format!("write the private sources: {e}"))?;
        let private = Private {
            dir: dir.to_path_buf(),
        };
        run(private.command("apt-get").args(["update", "-qq"]))?;
        Ok(private)
    }

    /// `program` (apt-get, apt-cache) with this configuration.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("-o").arg("Dir::Etc::sourcelist=/dev/null");
        for (key, sub) in [
            ("Dir::Etc::sourceparts", "sources"),
            ("Dir::State::Lists", "lists"),
            ("Dir::Cache", "cache"),
        ] {
            c.arg("-o")
                .arg(format!("{key}={}", self.dir.join(sub).display()));
        }
        c.args(["-o", "Dir::State::status=/dev/null"]);
        c.args(["-o", "APT::Sandbox::User=root"]);
        c
    }

    /// The package a metapackage depends on first (e.g. the suite's current kernel).
    pub fn first_dependency(&self, metapackage: &str, prefix: &str) -> Result<String> {
        let depends = output(self.command("apt-cache").args(["depends", metapackage]))?;
        depends
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with(prefix))
            .map(String::from)
            .ok_or_else(|| format!("{metapackage} depends on no {prefix}* package"))
    }
}

/// The one .deb `apt-get download` left in `dir`.
pub fn downloaded_deb(dir: &Path, what: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {what} left no .deb in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_of_both_formats() {
        let deb822 = "Types: deb\n# comment\nURIs: http://a.example/debian\nSuites: bookworm \
                      bookworm-updates\nComponents: main\n\nTypes: deb-src\nURIs: http://s.example\n\
                      Suites: bookworm\n\nTypes: deb\nURIs: http://b.example/sec\nSuites: \
                      bookworm-security\nEnabled: yes\n";
        let entries = deb822_entries(deb822);
        assert_eq!(
            entries,
            [
                (
                    "http://a.example/debian".to_string(),
                    vec!["bookworm".to_string(), "bookworm-updates".to_string()]
                ),
                (
                    "http://b.example/sec".to_string(),
                    vec!["bookworm-security".to_string()]
                ),
            ]
        );
        let list = "# deb http://old.example x\ndeb [arch=amd64 signed-by=/k.gpg] http://c.example/d \
                    trixie main\ndeb-src http://c.example/d trixie main\n";
        assert_eq!(
            one_line_entries(list),
            [("http://c.example/d".to_string(), vec!["trixie".to_string()])]
        );
    }

    #[test]
    fn private_sources_name_the_machine_s_archives() {
        let mirror = Mirror {
            archive: "http://a.example/debian".into(),
            security: Some("http://a.example/sec".into()),
        };
        let text = mirror.sources("deb-src", &["bookworm", "bookworm-updates"], true);
        assert!(
            text.contains("URIs: http://a.example/debian\nSuites: bookworm bookworm-updates\n")
        );
        assert!(text.contains("URIs: http://a.example/sec\nSuites: bookworm-security\n"));
        assert!(!mirror.sources("deb", &["bullseye"], false).contains("sec"));
    }
}
