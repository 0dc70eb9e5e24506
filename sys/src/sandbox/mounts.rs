//! Building the sandbox's root (SBX-3), in E, with the new mount API.
//!
//! Two phases, because E's credentials change in between:
//! 1. [`prepare`], still with H's ids (host root's, as the owner of root-owned directories):
//!    make every mount private, and take a detached copy (`open_tree`) of every host path
//!    that will be bound — resolving host paths needs the host ids.
//! 2. [`build`], with the inside ids (files created in the new tmpfs need an owner mapped in
//!    the user namespace): a tmpfs root on `spec.root`, then each piece attached relative to
//!    it with `move_mount`, read-only with `mount_setattr` (which only adds flags, so the
//!    locked flags of the source mounts are kept), the root made read-only, and `pivot_root`.
//!
//! Every mount point is resolved one component at a time with `O_NOFOLLOW`, so a symlink in
//! a bound tree can never redirect a mount.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::helper::check;
use super::SandboxSpec;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const RDONLY: u64 = 0x01;
const NOSUID: u64 = 0x02;
const NODEV: u64 = 0x04;
const NOEXEC: u64 = 0x08;

/// Device nodes bound from the host `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of a host path.
struct Tree {
    fd: OwnedFd,
    is_dir: bool,
}

enum System {
    Link(PathBuf),
    Tree(Tree),
}

/// Phase 1's result.
pub(super) struct Prepared {
    root: OwnedFd,
    system: Vec<(PathBuf, System)>,
    etc: Vec<(String, Tree)>,
    dev: Vec<(&'static str, Tree)>,
    binds: Vec<(PathBuf, Tree, bool)>,
}

fn cstr(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL"))
}

fn fd_or_err(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r as libc::c_int) })
}

fn zero_or_err(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A detached recursive copy of the host path `path`.
fn open_tree(path: &Path) -> io::Result<Tree> {
    let is_dir = std::fs::metadata(path)?.is_dir();
    let c = cstr(path.as_os_str())?;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE;
    // SAFETY: valid C string; returns a new fd.
    let fd = fd_or_err(unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags)
    })?;
    Ok(Tree { fd, is_dir })
}

/// Attaches the mount `mnt` on the mount point `target` (an `O_PATH` fd).
fn attach(mnt: &OwnedFd, target: &OwnedFd) -> io::Result<()> {
    let empty = c"";
    // SAFETY: both fds are live; empty paths with the EMPTY_PATH flags.
    zero_or_err(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
}

/// Adds mount flags to `mnt` (and its submounts if `recursive`); never clears any.
fn set_attr(mnt: &OwnedFd, attrs: u64, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: live fd, empty path, a mount_attr of the size given.
    zero_or_err(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
}

/// A new, detached filesystem mount of `fstype` with string options.
fn new_fs(fstype: &str, opts: &[(&str, String)], attrs: u64) -> io::Result<OwnedFd> {
    let t = CString::new(fstype)?;
    // SAFETY: valid C string; returns a new fd.
    let fs = fd_or_err(unsafe { libc::syscall(libc::SYS_fsopen, t.as_ptr(), FSOPEN_CLOEXEC) })?;
    for (k, v) in opts {
        let (k, v) = (CString::new(*k)?, CString::new(v.as_str())?);
        // SAFETY: live fd and C strings.
        zero_or_err(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        })?;
    }
    // SAFETY: live fd; null key and value for the create command.
    zero_or_err(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    })?;
    // SAFETY: live fd; returns a new mount fd.
    fd_or_err(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })
}

/// `O_PATH` open of one component under `dir`, never following a symlink.
fn open_at(dir: &OwnedFd, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let flags = flags | libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: live fd and C string.
    fd_or_err(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) }.into())
}

/// The components of an absolute inside path, refusing `..`, `.` and relative paths.
fn inside(path: &Path) -> io::Result<Vec<&OsStr>> {
    let mut parts = Vec::new();
    for (i, c) in path.components().enumerate() {
        match c {
            Component::RootDir if i == 0 => {}
            Component::Normal(n) => parts.push(n),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an absolute path without `..`",
                ))
            }
        }
    }
    if parts.is_empty() || !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path below /",
        ));
    }
    Ok(parts)
}

/// `mkdir -p` under `base` without following symlinks (mounts are crossed); the last dir.
fn mkdir_p(base: &OwnedFd, parts: &[&OsStr], mode: libc::mode_t) -> io::Result<OwnedFd> {
    let mut cur = base.try_clone()?;
    for part in parts {
        cur = match open_at(&cur, part, libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let c = cstr(part)?;
                // SAFETY: live fd and C string.
                zero_or_err(unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), mode) }.into())?;
                open_at(&cur, part, libc::O_DIRECTORY)?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(cur)
}

/// An `O_PATH` fd on the regular file `name` in `dir`, created empty if missing.
fn mkfile(dir: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    if let Ok(fd) = open_at(dir, name, 0) {
        // SAFETY: stat is plain old data filled by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: live fd, valid pointer.
        zero_or_err(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }.into())?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a symlink"));
        }
        return Ok(fd);
    }
    let c = cstr(name)?;
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: live fd and C string; the new fd is closed at once.
    let fd = fd_or_err(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o644) }.into())?;
    drop(fd);
    open_at(dir, name, 0)
}

/// The mount point for `target` (inside path) under `root`: a dir or an empty file.
fn mount_point(root: &OwnedFd, target: &Path, is_dir: bool) -> io::Result<OwnedFd> {
    let parts = inside(target)?;
    if is_dir {
        return mkdir_p(root, &parts, 0o755);
    }
    let (name, parents) = parts.split_last().expect("inside() is never empty");
    mkfile(&mkdir_p(root, parents, 0o755)?, name)
}

fn write_file(dir: &OwnedFd, name: &str, contents: &str) -> io::Result<()> {
    use std::io::Write;
    let c = CString::new(name)?;
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: live fd and C string.
    let fd = fd_or_err(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o644) }.into())?;
    std::fs::File::from(fd).write_all(contents.as_bytes())
}

fn etc_name(name: &str) -> Result<&str, String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!("bad /etc file name {name:?}"));
    }
    Ok(name)
}

/// Phase 1, with H's ids: every mount private, a detached copy of every host source.
pub(super) fn prepare(spec: &SandboxSpec) -> Result<Prepared, String> {
    // SAFETY: valid C strings; null type and data are allowed for a propagation change.
    check(
        unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        }
        .into(),
        "making / private",
    )?;
    let root_err = |e: io::Error| format!("root {}: {e}", spec.root.display());
    if std::fs::read_dir(&spec.root)
        .map_err(root_err)?
        .next()
        .is_some()
    {
        return Err(format!("root {}: not empty", spec.root.display()));
    }
    let c = cstr(spec.root.as_os_str()).map_err(root_err)?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: valid C string.
    let root = fd_or_err(unsafe { libc::open(c.as_ptr(), flags) }.into()).map_err(root_err)?;

    let mut system = Vec::new();
    for dir in &spec.system_dirs {
        let err = |e: io::Error| format!("system dir {}: {e}", dir.display());
        inside(dir).map_err(err)?;
        let meta = match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other.map_err(err)?,
        };
        let entry = if meta.file_type().is_symlink() {
            System::Link(std::fs::read_link(dir).map_err(err)?)
        } else {
            System::Tree(open_tree(dir).map_err(err)?)
        };
        system.push((dir.clone(), entry));
    }
    let mut etc = Vec::new();
    for name in &spec.etc_binds {
        let path = Path::new("/etc").join(etc_name(name)?);
        match open_tree(&path) {
            Ok(tree) => etc.push((name.clone(), tree)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("etc bind {}: {e}", path.display())),
        }
    }
    let mut dev = Vec::new();
    for name in DEVICES {
        match open_tree(&Path::new("/dev").join(name)) {
            Ok(tree) => dev.push((name, tree)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("device /dev/{name}: {e}")),
        }
    }
    let mut binds = Vec::new();
    for b in &spec.binds {
        let err =
            |e: io::Error| format!("bind {} -> {}: {e}", b.source.display(), b.target.display());
        inside(&b.target).map_err(err)?;
        binds.push((
            b.target.clone(),
            open_tree(&b.source).map_err(err)?,
            b.writable,
        ));
    }
    Ok(Prepared {
        root,
        system,
        etc,
        dev,
        binds,
    })
}

/// Phase 2, with the inside ids: assembles the root and pivots into it.
pub(super) fn build(spec: &SandboxSpec, p: Prepared) -> Result<(), String> {
    let root = assemble(spec, p, None)?;
    pivot(&root).map_err(|e| format!("pivot_root: {e}"))
}

/// Phase 2 of a warm slot's base root (SBX-10), with the inside ids: the same root as
/// [`build`] but without what every action gets fresh — `/proc`, `/tmp` and `/dev/shm` are
/// empty directories, and so is each of `mount_points` (e.g. `/sandbox`) — and no pivot: it
/// stays mounted on `spec.root` in the slot's mount namespace, for [`enter_action`].
pub(super) fn build_base(
    spec: &SandboxSpec,
    p: Prepared,
    mount_points: &[PathBuf],
) -> Result<(), String> {
    assemble(spec, p, Some(mount_points)).map(drop)
}

/// The fresh part of one action's root, in a new mount namespace copied from its slot's
/// (SBX-10): a new `/proc` (of the caller's new pid namespace), a new `/tmp` and `/dev/shm`
/// of `tmp_bytes` each owned by `ids`, the action's `binds` (sources opened with the caller's
/// ids, so host paths resolve as the runner's user), then `pivot_root` into the base root at
/// `root`.
pub(super) fn enter_action(
    root: &Path,
    tmp_bytes: u64,
    ids: (u32, u32),
    binds: &[super::Bind],
) -> Result<(), String> {
    let root_err = |e: io::Error| format!("root {}: {e}", root.display());
    let c = cstr(root.as_os_str()).map_err(root_err)?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: valid C string.
    let root = fd_or_err(unsafe { libc::open(c.as_ptr(), flags) }.into()).map_err(root_err)?;
    let mut trees = Vec::with_capacity(binds.len());
    for b in binds {
        let err =
            |e: io::Error| format!("bind {} -> {}: {e}", b.source.display(), b.target.display());
        inside(&b.target).map_err(err)?;
        trees.push(open_tree(&b.source).map_err(err)?);
    }
    let owner = |m: &mut Vec<(&str, String)>| {
        m.push(("uid", ids.0.to_string()));
        m.push(("gid", ids.1.to_string()));
    };
    let at = |path: &str| -> io::Result<OwnedFd> {
        let parts: Vec<&OsStr> = path.split('/').map(OsStr::new).collect();
        let mut dir = root.try_clone()?;
        for part in parts {
            dir = open_at(
                &dir,
                part,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )?;
        }
        Ok(dir)
    };
    at("proc")
        .and_then(|dir| attach(&new_fs("proc", &[], NOSUID | NODEV | NOEXEC)?, &dir))
        .map_err(|e| format!("/proc: {e}"))?;
    let mut tmp_opts = vec![
        ("mode", "1777".to_string()),
        ("size", tmp_bytes.to_string()),
    ];
    owner(&mut tmp_opts);
    at("tmp")
        .and_then(|dir| attach(&new_fs("tmpfs", &tmp_opts, NOSUID | NODEV)?, &dir))
        .map_err(|e| format!("/tmp: {e}"))?;
    at("dev/shm")
        .and_then(|dir| attach(&new_fs("tmpfs", &tmp_opts, NOSUID | NODEV | NOEXEC)?, &dir))
        .map_err(|e| format!("/dev/shm: {e}"))?;
    for (b, tree) in binds.iter().zip(&trees) {
        bind(&root, &b.target, tree, b.writable)
            .map_err(|e| format!("bind {} -> {}: {e}", b.source.display(), b.target.display()))?;
    }
    pivot(&root).map_err(|e| format!("pivot_root: {e}"))
}

/// The root of [`build`] (`base` = `None`) or of [`build_base`] (`Some(mount points)`),
/// mounted on `spec.root`, read-only; its fd.
fn assemble(spec: &SandboxSpec, p: Prepared, base: Option<&[PathBuf]>) -> Result<OwnedFd, String> {
    let ids = |m: &mut Vec<(&str, String)>| {
        m.push(("uid", spec.uid.inside.to_string()));
        m.push(("gid", spec.gid.inside.to_string()));
    };
    let etc_bytes: usize = spec.etc_files.iter().map(|(n, c)| n.len() + c.len()).sum();
    let mut opts = vec![
        ("mode", "0755".to_string()),
        ("size", (4 * 1024 * 1024 + 2 * etc_bytes).to_string()),
    ];
    ids(&mut opts);
    let root = new_fs("tmpfs", &opts, NOSUID | NODEV).map_err(|e| format!("root tmpfs: {e}"))?;
    attach(&root, &p.root)
        .map_err(|e| format!("mounting the root tmpfs on {}: {e}", spec.root.display()))?;
    drop(p.root);

    for (path, entry) in p.system {
        let err = |e: io::Error| format!("system dir {}: {e}", path.display());
        match entry {
            System::Link(to) => {
                let parts = inside(&path).map_err(err)?;
                let (name, parents) = parts.split_last().expect("inside() is never empty");
                let dir = mkdir_p(&root, parents, 0o755).map_err(err)?;
                let (name, to) = (cstr(name).map_err(err)?, cstr(to.as_os_str()).map_err(err)?);
                // SAFETY: live fd and C strings.
                zero_or_err(
                    unsafe { libc::symlinkat(to.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }.into(),
                )
                .map_err(err)?;
            }
            System::Tree(tree) => bind(&root, &path, &tree, false).map_err(err)?,
        }
    }

    let etc = mkdir_p(&root, &[OsStr::new("etc")], 0o755).map_err(|e| format!("/etc: {e}"))?;
    for (name, contents) in &spec.etc_files {
        write_file(&etc, etc_name(name)?, contents).map_err(|e| format!("/etc/{name}: {e}"))?;
    }
    for (name, tree) in &p.etc {
        bind(&root, &Path::new("/etc").join(name), tree, false)
            .map_err(|e| format!("etc bind {name}: {e}"))?;
    }
    drop(etc);

    dev(spec, &root, &p.dev, base.is_none()).map_err(|e| format!("/dev: {e}"))?;

    let proc_dir = mkdir_p(&root, &[OsStr::new("proc")], 0o555);
    let tmp_dir = mkdir_p(&root, &[OsStr::new("tmp")], 0o1777);
    match base {
        None => {
            proc_dir
                .and_then(|dir| attach(&new_fs("proc", &[], NOSUID | NODEV | NOEXEC)?, &dir))
                .map_err(|e| format!("/proc: {e}"))?;
            let tmp_opts = [
                ("mode", "1777".to_string()),
                ("size", spec.tmp_bytes.to_string()),
            ];
            tmp_dir
                .and_then(|dir| attach(&new_fs("tmpfs", &tmp_opts, NOSUID | NODEV)?, &dir))
                .map_err(|e| format!("/tmp: {e}"))?;
        }
        Some(points) => {
            proc_dir.map_err(|e| format!("/proc: {e}"))?;
            tmp_dir.map_err(|e| format!("/tmp: {e}"))?;
            for point in points {
                let err = |e: io::Error| format!("mount point {}: {e}", point.display());
                mkdir_p(&root, &inside(point).map_err(err)?, 0o755).map_err(err)?;
            }
        }
    }

    for (target, tree, writable) in &p.binds {
        bind(&root, target, tree, *writable).map_err(|e| {
            let source = spec.binds.iter().find(|b| &b.target == target);
            let source = source.map_or("?".into(), |b| b.source.display().to_string());
            format!("bind {source} -> {}: {e}", target.display())
        })?;
    }

    set_attr(&root, RDONLY, false).map_err(|e| format!("read-only root: {e}"))?;
    Ok(root)
}

/// Binds `tree` at `target`; read-only (recursively) unless `writable`; never suid or dev.
fn bind(root: &OwnedFd, target: &Path, tree: &Tree, writable: bool) -> io::Result<()> {
    let point = mount_point(root, target, tree.is_dir)?;
    attach(&tree.fd, &point)?;
    let attrs = if writable {
        NOSUID | NODEV
    } else {
        RDONLY | NOSUID | NODEV
    };
    set_attr(&tree.fd, attrs, true)
}

/// A tmpfs `/dev` with the host's harmless devices bound in, std symlinks, `/dev/shm` (a
/// tmpfs if `shm`, else an empty directory for one); read-only but for `/dev/shm`.
fn dev(spec: &SandboxSpec, root: &OwnedFd, devices: &[(&str, Tree)], shm: bool) -> io::Result<()> {
    let point = mkdir_p(root, &[OsStr::new("dev")], 0o755)?;
    let opts = [("mode", "0755".to_string()), ("size", "65536".to_string())];
    let dev = new_fs("tmpfs", &opts, NOSUID | NOEXEC)?;
    attach(&dev, &point)?;
    for (name, tree) in devices {
        let point = mkfile(&dev, OsStr::new(name))?;
        attach(&tree.fd, &point)?;
        set_attr(&tree.fd, NOSUID | NOEXEC, false)?;
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let (name, to) = (CString::new(name)?, CString::new(to)?);
        // SAFETY: live fd and C strings.
        zero_or_err(
            unsafe { libc::symlinkat(to.as_ptr(), dev.as_raw_fd(), name.as_ptr()) }.into(),
        )?;
    }
    let shm_point = mkdir_p(&dev, &[OsStr::new("shm")], 0o1777)?;
    if shm {
        let opts = [
            ("mode", "1777".to_string()),
            ("size", spec.tmp_bytes.to_string()),
        ];
        attach(
            &new_fs("tmpfs", &opts, NOSUID | NODEV | NOEXEC)?,
            &shm_point,
        )?;
    }
    set_attr(&dev, RDONLY, false)
}

/// `pivot_root(".", ".")` into `root`, detaching the host's root.
fn pivot(root: &OwnedFd) -> io::Result<()> {
    // SAFETY: live fd; C string literals.
    unsafe {
        zero_or_err(libc::fchdir(root.as_raw_fd()).into())?;
        zero_or_err(libc::syscall(
            libc::SYS_pivot_root,
            c".".as_ptr(),
            c".".as_ptr(),
        ))?;
        zero_or_err(libc::umount2(c".".as_ptr(), libc::MNT_DETACH).into())?;
        zero_or_err(libc::chdir(c"/".as_ptr()).into())
    }
}
