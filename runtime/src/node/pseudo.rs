//! Reading the kernel's pseudo files (procfs, sysfs, cgroupfs). They report a size of 0, so
//! `std::fs::read_to_string` reads them in probes that start at 32 bytes and double: eight
//! reads for a 1 KiB `mountinfo`. One buffer sized for what such files hold takes two
//! (the data, then end of file); every container start reads several of them.
use std::{io::Read, path::Path};

/// Room for the pseudo files a container start reads (`mountinfo`, `/proc/devices`,
/// `/proc/PID/cgroup`, `devices.list`); larger ones still read whole, in more calls.
const USUAL_SIZE: usize = 16 * 1024;

/// The whole text of pseudo file `path`.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    let mut text = String::with_capacity(USUAL_SIZE);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_whole_file_whatever_its_size() {
        let mountinfo = read_to_string(Path::new("/proc/self/mountinfo")).unwrap();
        assert_eq!(
            mountinfo,
            std::fs::read_to_string("/proc/self/mountinfo").unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        let big = "x".repeat(3 * USUAL_SIZE + 7);
        std::fs::write(dir.path().join("big"), &big).unwrap();
        assert_eq!(read_to_string(&dir.path().join("big")).unwrap(), big);
        assert!(read_to_string(&dir.path().join("missing")).is_err());
    }
}
