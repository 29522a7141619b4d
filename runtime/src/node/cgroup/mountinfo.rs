//! `/proc/PID/mountinfo` parsing (proc(5)): just what cgroup and bpffs discovery need.
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The path inside the filesystem that is the root of this mount.
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub super_options: Vec<String>,
}

/// Parses a whole mountinfo file; the error is the first malformed line.
pub fn parse(text: &str) -> Result<Vec<MountInfo>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| parse_line(line).ok_or_else(|| line.to_string()))
        .collect()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    // id parent major:minor root mount_point options [optional fields...] - fstype source super
    let (head, tail) = line.split_once(" - ")?;
    let head: Vec<&str> = head.split(' ').collect();
    if head.len() < 6 {
        return None;
    }
    let mut tail = tail.split(' ');
    let fs_type = tail.next()?;
    let _source = tail.next()?;
    let super_options = tail.next()?;
    Some(MountInfo {
        root: unescape(head[3]),
        mount_point: PathBuf::from(unescape(head[4])),
        fs_type: fs_type.to_string(),
        super_options: super_options.split(',').map(String::from).collect(),
    })
}

/// The kernel escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_optional_tags() {
        let m = parse(
            "36 31 0:33 / /sys/fs/cgroup/devices rw,nosuid shared:15 master:2 - cgroup cgroup rw,devices\n",
        )
        .unwrap();
        assert_eq!(m[0].root, "/");
        assert_eq!(m[0].mount_point, PathBuf::from("/sys/fs/cgroup/devices"));
        assert_eq!(m[0].fs_type, "cgroup");
        assert_eq!(m[0].super_options, ["rw", "devices"]);
    }

    #[test]
    fn unescapes_octal() {
        let m = parse("1 0 0:1 /a\\040b /mnt/with\\040space\\134x rw - tmpfs t rw\n").unwrap();
        assert_eq!(m[0].root, "/a b");
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space\\x"));
    }

    #[test]
    fn rejects_truncated_lines() {
        assert!(parse("1 0 0:1 / /mnt rw\n").is_err());
        assert!(parse("1 0 / - tmpfs\n").is_err());
    }
}
