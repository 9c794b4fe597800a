//! `--share HOST_DIR:TAG[,ro]`: host directories the guest mounts with virtio-fs (VIRTIO 1.2
//! §5.11). Shares with the same tag become one device holding several directories (VZ's
//! "multiple directory share", each under its folder name); the tag `automount` is macOS guests'
//! automatic mount (`/Volumes/My Shared Files`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The tag a user writes to get VZ's macOS automount tag.
pub const AUTOMOUNT: &str = "automount";
/// virtio-fs `tag` is a 36-byte field in the device configuration (VIRTIO 1.2 §5.11.4).
pub const MAX_TAG_BYTES: usize = 36;

/// One `--share` as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareSpec {
    /// Absolute, canonical host path of an existing directory.
    pub dir: PathBuf,
    pub tag: String,
    pub read_only: bool,
}

/// Parses `HOST_DIR:TAG[,ro]` and checks the directory. The path may itself contain `:`; the
/// tag is what follows the last one.
pub fn parse_share(spec: &str) -> Result<ShareSpec, String> {
    let (rest, read_only) = match spec.strip_suffix(",ro") {
        Some(rest) => (rest, true),
        None => (spec, false),
    };
    let Some((dir, tag)) = rest.rsplit_once(':') else {
        return Err(format!("--share {spec}: expected HOST_DIR:TAG[,ro], e.g. ~/src:src"));
    };
    if dir.is_empty() {
        return Err(format!("--share {spec}: the host directory is missing before `:`"));
    }
    check_tag(tag).map_err(|problem| format!("--share {spec}: {problem}"))?;
    let dir = Path::new(dir);
    let canonical =
        dir.canonicalize().map_err(|e| format!("--share {spec}: {}: {e}", dir.display()))?;
    if !canonical.is_dir() {
        return Err(format!("--share {spec}: {} is not a directory", dir.display()));
    }
    Ok(ShareSpec { dir: canonical, tag: tag.to_string(), read_only })
}

/// A tag the guest can mount: 1–36 bytes of UTF-8, no NUL, no `,` (it ends mount options).
fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag is empty; the guest mounts the share by its tag".into());
    }
    if tag.len() > MAX_TAG_BYTES {
        return Err(format!("tag `{tag}` is longer than {MAX_TAG_BYTES} bytes (virtio-fs limit)"));
    }
    if tag.contains(['\0', ',']) {
        return Err(format!("tag `{tag}` may not contain a NUL or a comma"));
    }
    Ok(())
}

/// One virtio-fs device: a tag and the directories behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareDevice {
    pub tag: String,
    /// One directory: the share is that directory. Several: the guest sees one folder per
    /// directory, named by `SharedDir::name`.
    pub dirs: Vec<SharedDir>,
}

/// A host directory in a share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedDir {
    pub path: PathBuf,
    /// The folder's name inside a multi-directory share (its host folder name).
    pub name: String,
    pub read_only: bool,
}

/// Groups `--share` options into devices, one per tag, in first-seen order.
pub fn group_shares(specs: &[ShareSpec]) -> Result<Vec<ShareDevice>, String> {
    let mut order: Vec<String> = Vec::new();
    let mut by_tag: BTreeMap<String, Vec<SharedDir>> = BTreeMap::new();
    for spec in specs {
        let name = spec
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        let dirs = by_tag.entry(spec.tag.clone()).or_insert_with(|| {
            order.push(spec.tag.clone());
            Vec::new()
        });
        if let Some(same) = dirs.iter().find(|d| d.name == name) {
            return Err(format!(
                "--share {}:{}: tag `{}` already has a folder named `{name}` ({}); a tag with \
                 several directories shows each under its folder name, so the names must differ",
                spec.dir.display(),
                spec.tag,
                spec.tag,
                same.path.display()
            ));
        }
        dirs.push(SharedDir { path: spec.dir.clone(), name, read_only: spec.read_only });
    }
    Ok(order
        .into_iter()
        .map(|tag| ShareDevice { dirs: by_tag.remove(&tag).unwrap_or_default(), tag })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dirs(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("hvrun-share-{name}-{}", std::process::id()));
        for sub in ["a/src", "b/src", "c:d", "plain"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(root.join("file"), b"x").unwrap();
        root
    }

    #[test]
    fn specs_parse_and_check_the_directory() {
        let root = temp_dirs("parse");
        let plain = root.join("plain");
        let s = parse_share(&format!("{}:work", plain.display())).unwrap();
        assert_eq!(
            s,
            ShareSpec { dir: plain.canonicalize().unwrap(), tag: "work".into(), read_only: false }
        );
        let s = parse_share(&format!("{}:work,ro", plain.display())).unwrap();
        assert!(s.read_only);
        // A colon inside the path: the tag is after the last one.
        let s = parse_share(&format!("{}:cd", root.join("c:d").display())).unwrap();
        assert_eq!((s.dir.file_name().unwrap().to_str().unwrap(), s.tag.as_str()), ("c:d", "cd"));
        let err = |spec: String| parse_share(&spec).unwrap_err();
        assert!(err(plain.display().to_string()).contains("expected HOST_DIR:TAG"));
        assert!(err(format!("{}:", plain.display())).contains("the tag is empty"));
        assert!(err(":tag".into()).contains("host directory is missing"));
        assert!(err(format!("{}:{}", plain.display(), "t".repeat(37))).contains("36 bytes"));
        assert!(err(format!("{}:a,b", plain.display())).contains("comma"));
        assert!(err(format!("{}:t", root.join("nope").display())).contains("No such file"));
        assert!(err(format!("{}:t", root.join("file").display())).contains("not a directory"));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn shares_group_by_tag_with_distinct_names() {
        let root = temp_dirs("group");
        let spec = |dir: &str, tag: &str| {
            parse_share(&format!("{}:{tag}", root.join(dir).display())).unwrap()
        };
        let devices =
            group_shares(&[spec("a/src", "code"), spec("plain", "data"), spec("c:d", "code")])
                .unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].tag, "code");
        let names: Vec<_> = devices[0].dirs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["src", "c:d"]);
        assert_eq!(devices[1].tag, "data");
        let e = group_shares(&[spec("a/src", "code"), spec("b/src", "code")]).unwrap_err();
        assert!(e.contains("already has a folder named `src`"), "{e}");
        // The same folder name under different tags is fine.
        assert!(group_shares(&[spec("a/src", "x"), spec("b/src", "y")]).is_ok());
        std::fs::remove_dir_all(root).unwrap();
    }
}
