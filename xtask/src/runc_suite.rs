//! runc's own integration suite (bats), prepared for the conformance suite
//! (`tests/tests/runc_conformance.rs`): the source of the installed runc from Debian's source
//! package (a private apt configuration, so the machine's sources stay as they are), the
//! small helpers the suite runs (`recvtty`, `sd-helper`, `seccompagent`, built from that source
//! against Debian's Go packages, offline), and its two test images made locally (busybox from
//! busybox-static; a minimal Debian from debootstrap), where the suite would download them.
//! And the suite of the newer runc the trixie node installs (tests/tests/nodes.rs): its
//! source the same way, with the same images; its helpers ship in that runc's package.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    Result,
    apt::{self, Mirror, Private, Target},
    output, run,
};

/// Where the prepared suite lives (the conformance suite reads the same default).
pub const DIR: &str = "/var/cache/npu-tests/runc-suite";

/// The helpers runc 1.1's suite expects at `contrib/cmd/NAME/NAME`.
pub const HELPERS: [&str; 3] = ["recvtty", "sd-helper", "seccompagent"];

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Prepares the suite for the installed runc unless it is there already.
pub fn prepare() -> Result {
    let version = output(Command::new("dpkg-query").args(["-W", "-f=${source:Version}", "runc"]))?;
    let dir = Path::new(DIR);
    let marker = dir.join("ready");
    if std::fs::read_to_string(&marker).is_ok_and(|v| v.trim() == version) {
        return Ok(());
    }
    eprintln!(
        "xtask setup: runc {version}'s integration suite in {DIR}: its source package, its \
         helpers built with Go, a Debian image from debootstrap (2-4 min)"
    );
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io("create the suite directory"))?;
    let codename = apt::codename()?;
    let src = source(
        dir,
        &[&codename, &format!("{codename}-updates")],
        true,
        &version,
    )?;
    build_helpers(Target::Host, dir, &src)?;
    images(dir, &src)?;
    std::fs::write(&marker, &version).map_err(io("write the marker"))?;
    Ok(())
}

/// The runc package whose suite the trixie node runs (one of `nodes::NEWER_PACKAGES`).
pub const NODE_RUNC: (&str, &str) = ("runc", "sid");

/// Where the node's suite is kept, under the node cache: the source of [`NODE_RUNC`]'s
/// version with the host suite's two images; its helpers come with the package itself.
pub fn node_dir(cache: &Path) -> PathBuf {
    cache.join(format!("runc-suite-{}", NODE_RUNC.1))
}

/// Prepares the node's suite unless it is there already (after [`prepare`], whose images it
/// takes, and after the node's packages are downloaded).
pub fn prepare_node() -> Result {
    let cache = Path::new(crate::nodes::NODE_CACHE);
    let deb = cache
        .join("debs")
        .join(format!("{}-{}.deb", NODE_RUNC.0, NODE_RUNC.1));
    // The source's version: a binNMU (`+bN`) names it in `Source: runc (VERSION)`.
    let source_field = output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Source"))?;
    let version = match source_field.split_once('(') {
        Some((_, v)) => v.trim_end_matches(')').trim().to_string(),
        None => output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?
            .trim()
            .to_string(),
    };
    let dir = node_dir(cache);
    let marker = dir.join("ready");
    if std::fs::read_to_string(&marker).is_ok_and(|v| v.trim() == version) {
        return Ok(());
    }
    eprintln!(
        "xtask setup: runc {version}'s integration suite for the trixie node, from Debian {}'s \
         source package (under a minute)",
        NODE_RUNC.1
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io("create the node suite's directory"))?;
    // Debian keeps only a suite's current source: once sid moves on, the kept package's is gone.
    let src = source(&dir, &[NODE_RUNC.1], false, &version).map_err(|e| {
        format!(
            "{e}\n(the source of the kept {} may have left {}: remove it and run setup again)",
            deb.display(),
            NODE_RUNC.1
        )
    })?;
    let _ = std::fs::remove_dir_all(dir.join("apt"));
    let host_src = std::fs::read_dir(Path::new(DIR).join("src"))
        .map_err(io("list the host suite's source"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("tests/integration/testdata").is_dir())
        .ok_or("the host suite is not prepared (its images are the node's)")?;
    for image in ["busybox-amd64.tar.xz", "debian-amd64.tar.xz"] {
        let at = Path::new("tests/integration/testdata").join(image);
        std::fs::copy(host_src.join(&at), src.join(&at)).map_err(io("copy a suite image"))?;
    }
    std::fs::write(&marker, &version).map_err(io("write the marker"))?;
    Ok(())
}

/// `apt-get source runc=VERSION` with a private deb-src configuration (`suites` of the
/// machine's own archive, and their security suites if `security`); returns the tree.
fn source(dir: &Path, suites: &[&str], security: bool, version: &str) -> Result<PathBuf> {
    let sources = Mirror::of_this_machine()?.sources("deb-src", suites, security);
    let apt = Private::new(&dir.join("apt"), &sources)?;
    let build = dir.join("src");
    std::fs::create_dir_all(&build).map_err(io("create the source directory"))?;
    run(apt
        .command("apt-get")
        .args(["source", "-qq"])
        .arg(format!("runc={version}"))
        .current_dir(&build))?;
    std::fs::read_dir(&build)
        .map_err(io("list the source directory"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && p.join("tests/integration").is_dir())
        .ok_or_else(|| "apt-get source runc left no tree with tests/integration".into())
}

/// Builds the helpers in place with Debian's Go and Go packages, offline (GOPATH mode: the
/// Debian source has no vendor/ directory), on `target` (the setup-closure suite builds them
/// in a fresh root); `dir` and `src` are paths as the target sees them.
pub fn build_helpers(target: Target<'_>, dir: &Path, src: &Path) -> Result {
    let gopath = dir.join("gopath");
    let link = gopath.join("src/github.com/opencontainers/runc");
    let host_link = target.host_path(&link);
    std::fs::create_dir_all(host_link.parent().unwrap()).map_err(io("create GOPATH"))?;
    std::os::unix::fs::symlink(src, &host_link).map_err(io("link the source into GOPATH"))?;
    for helper in HELPERS {
        run(target
            .command_in("go", &link)
            .args(["build", "-tags", "seccomp", "-o"])
            .arg(format!("contrib/cmd/{helper}/{helper}"))
            .arg(format!("./contrib/cmd/{helper}"))
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
            .env("GOCACHE", dir.join("gocache"))
            .env("GOFLAGS", "-buildvcs=false"))?;
    }
    Ok(())
}

/// The suite's images, where `get-images.sh` looks for them before downloading: plain tars
/// (tar reads them whatever their name says).
fn images(dir: &Path, src: &Path) -> Result {
    let testdata = src.join("tests/integration/testdata");
    let busybox = dir.join("busybox-rootfs");
    busybox_rootfs(&busybox)?;
    tar(&busybox, &testdata.join("busybox-amd64.tar.xz"))?;
    // hooks.bats runs ldconfig in a Debian image.
    let debian = dir.join("debian-rootfs");
    // Its hundreds of progress lines are shown only if it fails.
    output(
        Command::new("debootstrap")
            .args(["--variant=minbase"])
            .arg(apt::codename()?)
            .arg(&debian)
            .arg(Mirror::of_this_machine()?.archive),
    )?;
    tar(&debian, &testdata.join("debian-amd64.tar.xz"))?;
    let _ = std::fs::remove_dir_all(&debian);
    Ok(())
}

fn tar(root: &Path, out: &Path) -> Result {
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(root)
        .arg("-cf")
        .arg(out)
        .arg("."))
}

/// A busybox root filesystem laid out as the suite's image is: every applet linked, the usual
/// users and groups, no /proc or /sys (the suite's mask tests want them absent).
fn busybox_rootfs(root: &Path) -> Result {
    let _ = std::fs::remove_dir_all(root);
    for sub in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "dev",
        "tmp",
        "root",
        "home",
        "var/spool/mail",
        "var/www",
    ] {
        std::fs::create_dir_all(root.join(sub)).map_err(io("create the busybox rootfs"))?;
    }
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).map_err(io("chmod"))
    };
    mode(root, 0o755)?;
    mode(&root.join("tmp"), 0o1777)?;
    mode(&root.join("root"), 0o700)?;
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("busybox-static is not installed")?;
    let bin = root.join("bin/busybox");
    std::fs::copy(busybox, &bin).map_err(io("copy busybox"))?;
    for applet in output(Command::new(busybox).arg("--list-full"))?.lines() {
        let path = root.join(applet.trim_start_matches('/'));
        if !path.exists() {
            std::fs::hard_link(&bin, &path).map_err(io("link an applet"))?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
         bin:x:2:2:bin:/bin:/bin/false\nsys:x:3:3:sys:/dev:/bin/false\n\
         sync:x:4:100:sync:/bin:/bin/sync\nmail:x:8:8:mail:/var/spool/mail:/bin/false\n\
         www-data:x:33:33:www-data:/var/www:/bin/false\noperator:x:37:37:Operator:/var:/bin/false\n\
         nobody:x:65534:65534:nobody:/home:/bin/false\n",
    )
    .map_err(io("write passwd"))?;
    let groups = [
        ("root", 0),
        ("daemon", 1),
        ("bin", 2),
        ("sys", 3),
        ("adm", 4),
        ("tty", 5),
        ("disk", 6),
        ("lp", 7),
        ("mail", 8),
        ("kmem", 9),
        ("wheel", 10),
        ("cdrom", 11),
        ("dialout", 18),
        ("floppy", 19),
        ("video", 28),
        ("audio", 29),
        ("tape", 32),
        ("www-data", 33),
        ("operator", 37),
        ("utmp", 43),
        ("plugdev", 46),
        ("staff", 50),
        ("lock", 54),
        ("netdev", 82),
        ("users", 100),
        ("nogroup", 65534),
    ];
    let group: String = groups
        .iter()
        .map(|(name, gid)| {
            let members = if *name == "wheel" { "root" } else { "" };
            format!("{name}:x:{gid}:{members}\n")
        })
        .collect();
    std::fs::write(root.join("etc/group"), group).map_err(io("write group"))?;
    let shadow = root.join("etc/shadow");
    std::fs::write(&shadow, "root:*::0:::::\n").map_err(io("write shadow"))?;
    mode(&shadow, 0o600)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_node_s_suite_is_of_a_runc_the_node_installs() {
        assert!(crate::nodes::NEWER_PACKAGES.contains(&super::NODE_RUNC));
    }
}
