//! Pin directories on bpffs, the lock that keeps one loader per instance, and the lock
//! that makes configuration changes one at a time.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where the instance locks live (a tmpfs; bpffs holds no regular files).
const LOCK_DIR: &str = "/run/dns-xdp";

fn is_bpffs(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statfs buffer this function owns.
    let status = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    status == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// Makes `dir` (under `pin_root`) exist on a bpffs, readable by root only. Mounts bpffs
/// on /sys/fs/bpf when the root is below it and nothing is mounted there yet.
pub fn prepare(pin_root: &Path, dir: &Path) -> anyhow::Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    if pin_root.starts_with(bpffs) && !is_bpffs(bpffs) {
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!(
                "could not mount bpffs on /sys/fs/bpf ({status}); mount it with `mount -t bpf bpf /sys/fs/bpf`"
            );
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the pin directory {}", dir.display()))?;
    if !is_bpffs(dir) {
        bail!(
            "{} is not on a bpffs: pins need one (`mount -t bpf bpf <dir>`), or pass --pin-root",
            dir.display()
        );
    }
    Ok(())
}

/// Unpins everything in `dir` and removes it. Pinned links whose last holder this was
/// detach; pinned maps are freed with their last user.
pub fn remove_all(dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

/// `text` as letters, digits and `_` only, one to one: every other byte (and `_`
/// itself) becomes `_` and two hex digits, so `eth0.1` and `eth0_1` stay apart. For nft
/// identifiers and file names made from interface names and paths.
pub fn escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() {
            escaped.push(char::from(byte));
        } else {
            escaped.push_str(&format!("_{byte:02x}"));
        }
    }
    escaped
}

/// The lock directory, root's only (so no other user can take a lock and block restarts
/// or `detach`), and the path of the lock file named `name` in it.
fn lock_path(name: &str) -> anyhow::Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(LOCK_DIR)
        .with_context(|| format!("creating {LOCK_DIR}"))?;
    // A directory an older build created 0755 is made root's only too.
    fs::set_permissions(LOCK_DIR, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {LOCK_DIR}"))?;
    Ok(Path::new(LOCK_DIR).join(name))
}

/// Opens (creating it 0600) the lock file at `path`.
fn lock_file(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // One an older build created 0644 is made root's only too.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(file)
}

/// The lock that makes changes to a running instance's configuration and lists one at a
/// time (`set`, `allow`, `deny`, a loader writing its start-up configuration): each reads
/// the live configuration, changes it and flips, so two at once would lose one change.
/// Waits for the writer before it, a bounded time.
pub struct ConfigLock {
    _file: File,
}

/// How long a change waits for the one before it.
const CONFIG_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl ConfigLock {
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        let path = lock_path(&format!("{}.config.lock", escaped(&dir.to_string_lossy())))?;
        let file = lock_file(&path)?;
        let started = std::time::Instant::now();
        // SAFETY: a valid, open file descriptor.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            if started.elapsed() > CONFIG_LOCK_WAIT {
                bail!(
                    "another change to this instance has held {} for {} s; try again",
                    path.display(),
                    CONFIG_LOCK_WAIT.as_secs()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(Self { _file: file })
    }
}

/// Records the configuration file the daemon (`run`) of the instance in `dir` started
/// from, so that `status` can say which live values differ from it; `None` (`attach`,
/// from flags only) forgets it.
pub fn record_config_file(dir: &Path, file: Option<&Path>) -> anyhow::Result<()> {
    let path = lock_path(&format!("{}.config-file", escaped(&dir.to_string_lossy())))?;
    match file {
        Some(file) => {
            let file = fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
            fs::write(&path, file.as_os_str().as_encoded_bytes())
                .with_context(|| format!("writing {}", path.display()))
        }
        None => {
            let _ = fs::remove_file(&path);
            Ok(())
        }
    }
}

/// The configuration file recorded for the instance in `dir`, if any.
pub fn recorded_config_file(dir: &Path) -> Option<PathBuf> {
    let path = Path::new(LOCK_DIR).join(format!("{}.config-file", escaped(&dir.to_string_lossy())));
    fs::read_to_string(path).ok().map(PathBuf::from)
}

/// The lock of the reader of an instance's sampled queries (`dns-xdp log`, `top
/// --queries`): a BPF ring buffer has one consumer position, so two readers would each
/// see part of the samples. Not waited for: the second reader is told who holds it.
pub struct SampleLock {
    _file: File,
}

impl SampleLock {
    pub fn acquire(dir: &Path, iface: &str) -> anyhow::Result<Self> {
        let path = lock_path(&format!("{}.samples.lock", escaped(&dir.to_string_lossy())))?;
        let file = lock_file(&path)?;
        // SAFETY: a valid, open file descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "the samples of {iface} are being read by another `dns-xdp log` or `top \
                 --queries` (lock {} is held); a ring buffer has one reader: stop that one first",
                path.display()
            );
        }
        Ok(Self { _file: file })
    }
}

/// An exclusive lock on an instance (pin directory), held for a loader's lifetime and
/// released by the kernel when the process dies, whatever the way.
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    pub fn acquire(dir: &Path, iface: &str) -> anyhow::Result<Self> {
        let path = lock_path(&format!("{}.lock", escaped(&dir.to_string_lossy())))?;
        let file = lock_file(&path)?;
        // SAFETY: a valid, open file descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "dns-xdp is already running on {iface} (lock {} is held); \
                 use `dns-xdp set`, `allow` or `deny` to change it, or stop it first",
                path.display()
            );
        }
        Ok(Self { _file: file, path })
    }

    /// Releases the lock and deletes its file, and the instance's other files beside it
    /// (its configuration lock, the record of its configuration file): the instance is
    /// gone.
    pub fn remove(self) {
        if let Some(stem) = self
            .path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".lock"))
        {
            for suffix in [".config.lock", ".config-file", ".samples.lock"] {
                let _ = fs::remove_file(self.path.with_file_name(format!("{stem}{suffix}")));
            }
        }
        let _ = fs::remove_file(&self.path);
    }
}
