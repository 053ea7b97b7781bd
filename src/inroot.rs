//! Paths inside a root directory, resolved as if the root were `/`: the one resolver that
//! the build context, layer application, a stage's filesystem (COPY destinations, WORKDIR,
//! RUN mount points, image files such as `/etc/passwd`) and the sandbox's mounts go
//! through.
//!
//! Resolution goes by descriptors, one component at a time: each name is opened
//! (`O_PATH | O_NOFOLLOW`) relative to its directory's descriptor, a symbolic link is read
//! with `readlinkat` as bytes and its target walked inside the root (an absolute target
//! starts again at the root, `..` never climbs above it), so nothing is ever looked up by a
//! host path that a link could redirect. Opening an existing file uses the kernel's
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` where the kernel has it (5.6+, and
//! not refused by a seccomp filter), and the same descriptor walk elsewhere.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, FileStat, Mode};

/// Symbolic links followed in one resolution, as BuildKit's resolver of paths in a root
/// allows (the kernel's `openat2` stops at 40; [`Root::open`] then walks instead, so both
/// ways give the same answer).
pub const MAX_LINKS: usize = 255;
/// Directory descriptors one resolution holds; higher ones are reopened when `..` returns
/// to them.
const OPEN_DIRS: usize = 32;

/// Why a path did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    /// A component does not exist (with [`Missing::Fail`]).
    #[error("/{}: no such file or directory", .0.display())]
    NotFound(PathBuf),
    /// A component that is not a directory has more components after it.
    #[error("/{}: not a directory", .0.display())]
    NotDir(PathBuf),
    /// More than [`MAX_LINKS`] symbolic links.
    #[error("/{}: too many levels of symbolic links", .0.display())]
    Loop(PathBuf),
    /// A symbolic link on the way, with [`Links::Refuse`].
    #[error("/{} is a symlink, refused here", .0.display())]
    Symlink(PathBuf),
    /// `..` above the root, with [`AboveRoot::Refuse`].
    #[error("{}: leads above the root", .0.display())]
    AboveRoot(PathBuf),
    /// A directory to make ([`Missing::MakeDirs`]) behind an absolute symbolic link whose
    /// target is not in the root: in a container the link would point outside it.
    #[error(
        "/{} is a symlink to {}, which is not in the image: it points outside the root; refusing to write through it",
        link.display(),
        target.display()
    )]
    LinkOut {
        /// The link.
        link: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// Not a regular file where one is read.
    #[error("/{} is not a regular file", .0.display())]
    NotRegular(PathBuf),
    /// A file read whole is larger than the caller allows.
    #[error("/{} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The most the caller reads.
        limit: u64,
    },
    /// A system call failed.
    #[error("/{}: {errno}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// What the kernel said.
        errno: Errno,
    },
}

impl InRootError {
    /// A failed I/O call at `path`, as an error.
    pub fn from_io(path: PathBuf, e: &std::io::Error) -> InRootError {
        InRootError::Io {
            path,
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

impl From<InRootError> for std::io::Error {
    fn from(e: InRootError) -> std::io::Error {
        let kind = match &e {
            InRootError::NotFound(_) => std::io::ErrorKind::NotFound,
            InRootError::Io { errno, .. } => std::io::Error::from(*errno).kind(),
            _ => std::io::ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, e)
    }
}

/// What a symbolic link on the way does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// It is followed inside the root.
    Follow,
    /// It is an error ([`InRootError::Symlink`]).
    Refuse,
}

/// What `..` at the root does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AboveRoot {
    /// Nothing, as in a chroot.
    Stay,
    /// It is an error ([`InRootError::AboveRoot`]).
    Refuse,
}

/// What a missing component does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The rest of the path is kept as written (`..` still applies), and the result says
    /// nothing is there.
    Keep,
    /// It is an error ([`InRootError::NotFound`]).
    Fail,
    /// It is made, a directory of mode 0755, and the walk goes on; never behind an absolute
    /// symbolic link whose target is missing ([`InRootError::LinkOut`]).
    MakeDirs,
}

/// How a path is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Whether a symbolic link as the last component is followed too.
    pub follow_last: bool,
    /// Symbolic links on the way.
    pub links: Links,
    /// `..` at the root.
    pub above_root: AboveRoot,
    /// Missing components.
    pub missing: Missing,
}

impl Rules {
    /// As a process chrooted into the root sees the path: links followed, `..` stays at
    /// the root, a missing rest kept as written.
    pub fn chroot(follow_last: bool) -> Rules {
        Rules {
            follow_last,
            links: Links::Follow,
            above_root: AboveRoot::Stay,
            missing: Missing::Keep,
        }
    }

    /// No symbolic link anywhere on the path (the last component included) and no `..`
    /// above the root; a missing part is handled by `missing`.
    pub fn strict(missing: Missing) -> Rules {
        Rules {
            follow_last: true,
            links: Links::Refuse,
            above_root: AboveRoot::Refuse,
            missing,
        }
    }
}

/// What a path resolved to.
#[derive(Debug)]
pub struct Resolved {
    /// The path relative to the root with every followed link replaced by its target
    /// ("" is the root itself); names are kept as bytes.
    pub rel: PathBuf,
    /// The entry's own status (a link as the last component, not followed, is the link);
    /// `None` when nothing is there.
    pub stat: Option<FileStat>,
    /// An `O_PATH` descriptor of the entry, when it exists.
    pub fd: Option<OwnedFd>,
    /// An `O_PATH` descriptor of the directory that holds the entry, when that exists (also
    /// when the entry itself does not); `None` for the root itself.
    pub parent: Option<OwnedFd>,
    /// The symbolic links followed on the way, relative to the root, in order.
    pub links: Vec<PathBuf>,
    /// How many leading components of [`Resolved::rel`] exist (all of them when
    /// [`Resolved::stat`] is `Some`).
    pub existing: usize,
}

/// The kind of an existing entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (only as a last component not followed).
    Symlink,
    /// A fifo, socket or device.
    Other,
}

impl FileKind {
    /// The kind of a `st_mode`.
    pub fn of_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFREG => FileKind::File,
            libc::S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }
}

impl Resolved {
    /// What is there, if anything.
    pub fn kind(&self) -> Option<FileKind> {
        self.stat.map(|st| FileKind::of_mode(st.st_mode))
    }

    /// The last component's name; `None` for the root.
    pub fn name(&self) -> Option<&OsStr> {
        self.rel.file_name()
    }

    /// [`Resolved::rel`] as text: an error for a name that is not UTF-8, which a layer
    /// entry cannot name.
    pub fn rel_str(&self) -> anyhow::Result<&str> {
        self.rel.to_str().ok_or_else(|| {
            anyhow::anyhow!(
                "/{} is not UTF-8, which rbuild cannot write in a layer",
                self.rel.display()
            )
        })
    }
}

/// A directory that paths are resolved inside.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// Flags of the descriptors the walk holds.
fn path_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl Root {
    /// Opens `path`, a directory on the host, as a root.
    pub fn open_dir(path: &Path) -> Result<Root, InRootError> {
        let fd = nix::fcntl::open(path, path_flags() | OFlag::O_DIRECTORY, Mode::empty()).map_err(
            |errno| InRootError::Io {
                path: path.to_path_buf(),
                errno,
            },
        )?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The root's host path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host path of `rel`, a [`Resolved::rel`], for the callers that still work by
    /// path on what the resolver found.
    pub fn host(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Resolves `path` (absolute or not, both from the root) by `rules`.
    pub fn resolve(&self, path: &Path, rules: Rules) -> Result<Resolved, InRootError> {
        self.resolve_visiting(path, rules, &mut |_, _| Ok(()))
    }

    /// As [`Root::resolve`], calling `on_dir(rel, status)` for every directory the walk
    /// enters, before it looks inside (a caller may make it searchable there).
    pub fn resolve_visiting(
        &self,
        path: &Path,
        rules: Rules,
        on_dir: &mut dyn FnMut(&Path, &FileStat) -> Result<(), InRootError>,
    ) -> Result<Resolved, InRootError> {
        Walk::new(self, path, rules).run(on_dir)
    }

    /// Makes what is missing of `path`, symbolic links refused on the way: the directories
    /// above it, and a directory (`dir`) or an empty file as its last component. An
    /// existing last entry, of any kind, is left as it is.
    pub fn make(&self, path: &Path, dir: bool) -> Result<Resolved, InRootError> {
        let strict = Rules::strict(Missing::MakeDirs);
        if dir {
            return self.resolve(path, strict);
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        let p = self.resolve(parent, strict)?;
        let name = path.file_name().ok_or_else(|| InRootError::Io {
            path: path.to_path_buf(),
            errno: Errno::EISDIR,
        })?;
        let dirfd = p.fd.as_ref().expect("a made directory has a descriptor");
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        match openat(
            dirfd,
            name,
            flags | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        ) {
            Ok(_) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(io_at(p.rel.join(name))(errno)),
        }
        self.resolve(
            path,
            Rules {
                missing: Missing::Fail,
                ..strict
            },
        )
    }

    /// Opens the existing entry at `path` with `flags` (`O_NOFOLLOW` leaves a last link
    /// unfollowed), symbolic links confined to the root: by `openat2(RESOLVE_IN_ROOT)`
    /// where the kernel has it, by the descriptor walk elsewhere.
    pub fn open(&self, path: &Path, flags: OFlag) -> Result<OwnedFd, InRootError> {
        self.open_by(path, flags, openat2_works())
    }

    fn open_by(&self, path: &Path, flags: OFlag, kernel: bool) -> Result<OwnedFd, InRootError> {
        let flags = flags | OFlag::O_CLOEXEC;
        if kernel {
            let how = OpenHow::new()
                .flags(flags)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            match openat2(&self.fd, &relative(path), how) {
                Ok(fd) => return Ok(fd),
                Err(Errno::ENOENT) => return Err(InRootError::NotFound(relative(path))),
                Err(Errno::ENOTDIR) => return Err(InRootError::NotDir(relative(path))),
                // More links than the kernel follows, or a last link with O_NOFOLLOW: the
                // walk says which.
                Err(Errno::ELOOP) => {}
                Err(errno) => {
                    return Err(InRootError::Io {
                        path: relative(path),
                        errno,
                    })
                }
            }
        }
        let rules = Rules {
            follow_last: !flags.contains(OFlag::O_NOFOLLOW),
            missing: Missing::Fail,
            ..Rules::chroot(true)
        };
        let r = self.resolve(path, rules)?;
        let io = |errno| InRootError::Io {
            path: r.rel.clone(),
            errno,
        };
        match (&r.parent, r.name()) {
            (Some(parent), Some(name)) => {
                openat(parent, name, flags | OFlag::O_NOFOLLOW, Mode::empty()).map_err(io)
            }
            _ => openat(&self.fd, ".", flags, Mode::empty()).map_err(io),
        }
    }
}

impl Root {
    /// Reads the regular file at `path` (links followed inside the root), up to `limit`
    /// bytes; `None` when nothing is there. A fifo or a device is never read, nor waited
    /// on: it is opened without blocking and refused ([`InRootError::NotRegular`]).
    pub fn read_file(&self, path: &Path, limit: u64) -> Result<Option<Vec<u8>>, InRootError> {
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let fd = match self.open(path, flags) {
            Ok(fd) => fd,
            Err(InRootError::NotFound(_) | InRootError::NotDir(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let io = |e: std::io::Error| InRootError::from_io(relative(path), &e);
        let file = std::fs::File::from(fd);
        if !file.metadata().map_err(io)?.is_file() {
            return Err(InRootError::NotRegular(relative(path)));
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, limit.saturating_add(1)),
            &mut bytes,
        )
        .map_err(io)?;
        if bytes.len() as u64 > limit {
            return Err(InRootError::TooLarge {
                path: relative(path),
                limit,
            });
        }
        Ok(Some(bytes))
    }
}

/// Whether `openat2` can be used here (probed once).
fn openat2_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT);
        openat2(nix::fcntl::AT_FDCWD, "/", how).is_ok()
    })
}

/// `path` without its leading `/`s (`.` for the root).
fn relative(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    let start = bytes.iter().position(|&b| b != b'/').unwrap_or(bytes.len());
    if start == bytes.len() {
        return PathBuf::from(".");
    }
    PathBuf::from(OsStr::from_bytes(&bytes[start..]))
}

/// The non-empty components of `path`, as bytes, last first (a stack to pop).
fn components_rev(path: &[u8]) -> impl Iterator<Item = OsString> + '_ {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(|c| OsString::from_vec(c.to_vec()))
}

/// A failed system call at `path`, as an error.
fn io_at(path: PathBuf) -> impl Fn(Errno) -> InRootError {
    move |errno| InRootError::Io {
        path: path.clone(),
        errno,
    }
}

/// A second descriptor of `fd`.
fn dup(fd: &OwnedFd, path: PathBuf) -> Result<OwnedFd, InRootError> {
    fd.try_clone().map_err(|e| InRootError::from_io(path, &e))
}

/// A directory descriptor the walk works from: the root's own, or one the walk holds
/// (shared, so stepping into a directory costs no `dup`).
enum DirFd<'a> {
    Root(&'a OwnedFd),
    Held(Rc<OwnedFd>),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => fd.as_fd(),
            DirFd::Held(fd) => fd.as_fd(),
        }
    }
}

impl DirFd<'_> {
    /// The descriptor as one the caller owns: the held one itself when nothing else
    /// shares it, else a `dup`.
    fn into_owned(self, path: PathBuf) -> Result<OwnedFd, InRootError> {
        match self {
            DirFd::Root(fd) => dup(fd, path),
            DirFd::Held(fd) => Rc::try_unwrap(fd).or_else(|fd| dup(&fd, path)),
        }
    }
}

/// One resolution in progress.
struct Walk<'a> {
    root: &'a Root,
    asked: PathBuf,
    rules: Rules,
    /// Components still to walk, next last.
    todo: Vec<OsString>,
    /// The path so far, resolved.
    names: Vec<OsString>,
    /// How many of `names` exist (a prefix): the rest were missing and are kept as written.
    existing: usize,
    /// Descriptors of the existing prefix (`fds[i]` is `names[..=i]`); only the deepest
    /// [`OPEN_DIRS`] are held, the others reopened when needed.
    fds: Vec<Option<Rc<OwnedFd>>>,
    /// Status of the last existing name.
    last_stat: Option<FileStat>,
    links: Vec<PathBuf>,
    /// The last absolute link followed and its target.
    absolute_link: Option<(PathBuf, PathBuf)>,
}

impl<'a> Walk<'a> {
    fn new(root: &'a Root, path: &Path, rules: Rules) -> Walk<'a> {
        Walk {
            root,
            asked: path.to_path_buf(),
            rules,
            todo: components_rev(path.as_os_str().as_bytes()).collect(),
            names: Vec::new(),
            existing: 0,
            fds: Vec::new(),
            last_stat: None,
            links: Vec::new(),
            absolute_link: None,
        }
    }

    fn rel(&self, extra: Option<&OsStr>) -> PathBuf {
        let mut p: PathBuf = self.names.iter().collect();
        if let Some(e) = extra {
            p.push(e);
        }
        p
    }

    fn io(&self, extra: Option<&OsStr>) -> impl Fn(Errno) -> InRootError + use<> {
        io_at(self.rel(extra))
    }

    fn run(
        mut self,
        on_dir: &mut dyn FnMut(&Path, &FileStat) -> Result<(), InRootError>,
    ) -> Result<Resolved, InRootError> {
        while let Some(c) = self.todo.pop() {
            match c.as_bytes() {
                b"." => {}
                b".." => self.up()?,
                _ if self.existing < self.names.len() => self.names.push(c),
                _ => self.step(c, on_dir)?,
            }
        }
        self.finish()
    }

    /// `..`: back to the parent, never above the root.
    fn up(&mut self) -> Result<(), InRootError> {
        if self
            .last_stat
            .is_some_and(|st| st.st_mode & libc::S_IFMT != libc::S_IFDIR)
        {
            return Err(InRootError::NotDir(self.rel(None)));
        }
        if self.names.is_empty() {
            return match self.rules.above_root {
                AboveRoot::Stay => Ok(()),
                AboveRoot::Refuse => Err(InRootError::AboveRoot(self.asked.clone())),
            };
        }
        self.names.pop();
        if self.existing > self.names.len() {
            self.existing -= 1;
            self.fds.pop();
            self.last_stat = None;
        }
        Ok(())
    }

    /// The descriptor of the deepest existing directory (the root when there is none),
    /// reopened from below when it was let go.
    fn dir(&self) -> Result<DirFd<'a>, InRootError> {
        self.fd_at(self.existing)
    }

    /// The descriptor of the first `n` existing names (the root for 0), reopened from the
    /// nearest one held below when it was let go.
    fn fd_at(&self, n: usize) -> Result<DirFd<'a>, InRootError> {
        let held_at = |i: usize| self.fds[i].as_ref().map(|fd| DirFd::Held(Rc::clone(fd)));
        let Some(top) = n.checked_sub(1) else {
            return Ok(DirFd::Root(&self.root.fd));
        };
        if let Some(fd) = held_at(top) {
            return Ok(fd);
        }
        // The nearest one held, then the names above it, each known to be a directory.
        let held = self.fds[..top].iter().rposition(Option::is_some);
        let mut cur = held.and_then(held_at).unwrap_or(DirFd::Root(&self.root.fd));
        for name in &self.names[held.map_or(0, |i| i + 1)..=top] {
            let fd = openat(
                &cur,
                name.as_os_str(),
                path_flags() | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .map_err(self.io(None))?;
            cur = DirFd::Held(Rc::new(fd));
        }
        Ok(cur)
    }

    /// Walks one name below the current directory.
    fn step(
        &mut self,
        c: OsString,
        on_dir: &mut dyn FnMut(&Path, &FileStat) -> Result<(), InRootError>,
    ) -> Result<(), InRootError> {
        if self
            .last_stat
            .is_some_and(|st| st.st_mode & libc::S_IFMT != libc::S_IFDIR)
        {
            return Err(InRootError::NotDir(self.rel(None)));
        }
        let dir = self.dir()?;
        let fd = match openat(&dir, c.as_os_str(), path_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return self.missing(&dir, c, on_dir),
            Err(errno) => return Err(self.io(Some(&c))(errno)),
        };
        let st = fstat(&fd).map_err(self.io(Some(&c)))?;
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if is_link && (!self.todo.is_empty() || self.rules.follow_last) {
            return self.follow(&dir, c);
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            on_dir(&self.rel(Some(&c)), &st)?;
        }
        self.enter(c, fd, st);
        Ok(())
    }

    /// Adds an existing entry to the path.
    fn enter(&mut self, c: OsString, fd: OwnedFd, st: FileStat) {
        self.names.push(c);
        self.existing += 1;
        self.fds.push(Some(Rc::new(fd)));
        self.last_stat = Some(st);
        if self.fds.len() > OPEN_DIRS {
            let old = self.fds.len() - OPEN_DIRS - 1;
            self.fds[old] = None;
        }
    }

    /// A name that is not there, by the rules.
    fn missing(
        &mut self,
        dir: &DirFd<'_>,
        c: OsString,
        on_dir: &mut dyn FnMut(&Path, &FileStat) -> Result<(), InRootError>,
    ) -> Result<(), InRootError> {
        match self.rules.missing {
            Missing::Keep => {
                self.names.push(c);
                Ok(())
            }
            Missing::Fail => Err(InRootError::NotFound(self.rel(Some(&c)))),
            Missing::MakeDirs => {
                if let Some((link, target)) = self.absolute_link.take() {
                    return Err(InRootError::LinkOut { link, target });
                }
                match mkdirat(dir, c.as_os_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(self.io(Some(&c))(errno)),
                }
                let fd = openat(
                    dir,
                    c.as_os_str(),
                    path_flags() | OFlag::O_DIRECTORY,
                    Mode::empty(),
                )
                .map_err(self.io(Some(&c)))?;
                let st = fstat(&fd).map_err(self.io(Some(&c)))?;
                on_dir(&self.rel(Some(&c)), &st)?;
                self.enter(c, fd, st);
                Ok(())
            }
        }
    }

    /// Replaces link `c` (in `dir`) by its target.
    fn follow(&mut self, dir: &DirFd<'_>, c: OsString) -> Result<(), InRootError> {
        let link = self.rel(Some(&c));
        if self.rules.links == Links::Refuse {
            return Err(InRootError::Symlink(link));
        }
        if self.links.len() >= MAX_LINKS {
            return Err(InRootError::Loop(self.asked.clone()));
        }
        let target = readlinkat(dir, c.as_os_str()).map_err(self.io(Some(&c)))?;
        let bytes = target.as_bytes();
        if bytes.first() == Some(&b'/') {
            self.absolute_link = Some((link.clone(), PathBuf::from(&target)));
            self.names.clear();
            self.existing = 0;
            self.fds.clear();
            self.last_stat = None;
        }
        self.todo.extend(components_rev(bytes));
        self.links.push(link);
        Ok(())
    }

    fn finish(mut self) -> Result<Resolved, InRootError> {
        let rel = self.rel(None);
        let len = self.names.len();
        // The parent exists when every name but (perhaps) the last does.
        let parent = match len.checked_sub(1) {
            Some(p) if self.existing >= p => Some(self.fd_at(p)?),
            _ => None,
        };
        let (fd, stat) = if self.existing < len {
            (None, None)
        } else {
            let fd = self.dir()?;
            let stat = match self.last_stat.take() {
                Some(st) if len > 0 => st,
                _ => fstat(&fd).map_err(self.io(None))?,
            };
            (Some(fd), Some(stat))
        };
        // Let go of the walk's own references, so the two kept are handed over undup'ed.
        self.fds.clear();
        let parent = parent.map(|d| d.into_owned(rel.clone())).transpose()?;
        let fd = fd.map(|d| d.into_owned(rel.clone())).transpose()?;
        Ok(Resolved {
            rel,
            stat,
            fd,
            parent,
            links: self.links,
            existing: self.existing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, Root) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        fs::create_dir_all(p.join("usr/bin")).unwrap();
        fs::write(p.join("usr/bin/sh"), "#!").unwrap();
        symlink("usr/bin", p.join("bin")).unwrap();
        symlink("/../../../etc", p.join("escape")).unwrap();
        symlink("../..", p.join("usr/up")).unwrap();
        symlink("/usr/bin/sh", p.join("abs")).unwrap();
        symlink("loop", p.join("loop")).unwrap();
        let root = Root::open_dir(p).unwrap();
        (t, root)
    }

    fn rel(root: &Root, path: &str, rules: Rules) -> (String, Option<FileKind>) {
        let r = root.resolve(Path::new(path), rules).unwrap();
        (r.rel.to_string_lossy().into_owned(), r.kind())
    }

    #[test]
    fn links_are_followed_inside_the_root() {
        let (_t, root) = tree();
        let chroot = Rules::chroot(true);
        assert_eq!(
            rel(&root, "/bin/sh", chroot),
            ("usr/bin/sh".into(), Some(FileKind::File))
        );
        assert_eq!(
            rel(&root, "/escape/passwd", chroot),
            ("etc/passwd".into(), None)
        );
        assert_eq!(
            rel(&root, "usr/up/usr/up/usr/bin", chroot),
            ("usr/bin".into(), Some(FileKind::Dir))
        );
        assert_eq!(rel(&root, "/../../abs", chroot).0, "usr/bin/sh");
        assert_eq!(
            rel(&root, "/bin", Rules::chroot(false)),
            ("bin".into(), Some(FileKind::Symlink))
        );
        assert_eq!(
            rel(&root, "/", chroot),
            (String::new(), Some(FileKind::Dir))
        );
        // Back up with `..` onto a directory that exists: it is there.
        assert_eq!(
            rel(&root, "/usr/bin/..", chroot),
            ("usr".into(), Some(FileKind::Dir))
        );
        // A missing rest is kept as written, `..` included.
        assert_eq!(
            rel(&root, "/bin/x/y/../z", chroot),
            ("usr/bin/x/z".into(), None)
        );
        let r = root.resolve(Path::new("/bin/new"), chroot).unwrap();
        assert!(r.parent.is_some() && r.fd.is_none());
        assert_eq!(r.existing, 2);
        let r = root.resolve(Path::new("/a/b"), chroot).unwrap();
        assert!(r.parent.is_none());
        assert_eq!(r.links.len(), 0);
    }

    #[test]
    fn the_rules_refuse_what_they_say() {
        let (_t, root) = tree();
        let err = |path: &str, rules: Rules| root.resolve(Path::new(path), rules).unwrap_err();
        assert!(matches!(
            err("/loop", Rules::chroot(true)),
            InRootError::Loop(_)
        ));
        assert!(matches!(
            err("/bin/sh/x", Rules::chroot(true)),
            InRootError::NotDir(_)
        ));
        assert!(matches!(
            err("/usr/bin/sh/..", Rules::chroot(true)),
            InRootError::NotDir(_)
        ));
        let strict = Rules::strict(Missing::Fail);
        assert!(matches!(err("/bin/sh", strict), InRootError::Symlink(_)));
        assert!(matches!(
            err("/usr/../..", strict),
            InRootError::AboveRoot(_)
        ));
        assert!(matches!(err("/usr/nope", strict), InRootError::NotFound(_)));
        let make = Rules {
            missing: Missing::MakeDirs,
            ..Rules::chroot(true)
        };
        // Made through a relative link; never behind an absolute one to a missing place.
        let r = root.resolve(Path::new("/bin/a/b"), make).unwrap();
        assert_eq!(r.rel, Path::new("usr/bin/a/b"));
        assert!(root.path().join("usr/bin/a/b").is_dir());
        assert!(matches!(
            err("/escape/x", make),
            InRootError::LinkOut { .. }
        ));
        assert!(!root.path().join("etc").exists());
    }

    #[test]
    fn make_makes_what_is_missing_and_refuses_links() {
        let (_t, root) = tree();
        let r = root.make(Path::new("/a/b/f"), false).unwrap();
        assert_eq!(r.kind(), Some(FileKind::File));
        assert!(root.path().join("a/b").is_dir());
        assert_eq!(
            root.make(Path::new("a/b/d"), true).unwrap().kind(),
            Some(FileKind::Dir)
        );
        // An existing entry is left alone, whatever it is.
        assert_eq!(
            root.make(Path::new("a/b/f"), true).unwrap().kind(),
            Some(FileKind::File)
        );
        assert!(matches!(
            root.make(Path::new("/bin/x"), false),
            Err(InRootError::Symlink(_))
        ));
        assert!(!root.path().join("usr/bin/x").exists());
    }

    #[test]
    fn read_file_reads_regular_files_only_and_never_waits() {
        let (_t, root) = tree();
        assert_eq!(
            root.read_file(Path::new("/bin/sh"), 10).unwrap().as_deref(),
            Some(&b"#!"[..])
        );
        assert!(root.read_file(Path::new("/nope/x"), 10).unwrap().is_none());
        assert!(matches!(
            root.read_file(Path::new("/bin/sh"), 1),
            Err(InRootError::TooLarge { .. })
        ));
        // A fifo with no writer would block an ordinary open forever.
        nix::unistd::mkfifo(&root.path().join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        assert!(matches!(
            root.read_file(Path::new("/fifo"), 10),
            Err(InRootError::NotRegular(_))
        ));
        assert!(matches!(
            root.read_file(Path::new("/usr"), 10),
            Err(InRootError::NotRegular(_))
        ));
    }

    #[test]
    fn link_targets_are_bytes() {
        let (_t, root) = tree();
        let name = OsStr::from_bytes(b"d\xff");
        fs::create_dir(root.path().join(name)).unwrap();
        symlink(
            Path::new(OsStr::from_bytes(b"/d\xff")),
            root.path().join("l"),
        )
        .unwrap();
        let r = root
            .resolve(Path::new("/l/f"), Rules::chroot(true))
            .unwrap();
        assert_eq!(r.rel.as_os_str().as_bytes(), b"d\xff/f");
        assert!(r.parent.is_some());
        assert!(r.rel_str().is_err());
    }

    #[test]
    fn deeper_than_the_descriptors_it_holds() {
        let (_t, root) = tree();
        let deep = vec!["d"; 3 * OPEN_DIRS].join("/");
        fs::create_dir_all(root.path().join(&deep)).unwrap();
        fs::write(root.path().join("d/f"), "").unwrap();
        let back = vec![".."; 3 * OPEN_DIRS - 1].join("/");
        let r = root
            .resolve(Path::new(&format!("/{deep}/{back}/f")), Rules::chroot(true))
            .unwrap();
        assert_eq!(r.rel, Path::new("d/f"));
        assert_eq!(r.kind(), Some(FileKind::File));
    }

    #[test]
    fn openat2_and_the_walk_open_the_same_files() {
        let (_t, root) = tree();
        let ino = |fd: OwnedFd| fstat(&fd).unwrap().st_ino;
        for path in [
            "/bin/sh",
            "abs",
            "/usr/up/../usr/bin/../../bin/sh",
            "/usr/up/usr",
        ] {
            for kernel in [false, true] {
                if kernel && !openat2_works() {
                    continue;
                }
                let fd = root
                    .open_by(Path::new(path), OFlag::O_RDONLY, kernel)
                    .unwrap();
                let want = fs::metadata(root.path().join(if path.ends_with("usr") {
                    "usr"
                } else {
                    "usr/bin/sh"
                }))
                .unwrap();
                assert_eq!(
                    ino(fd),
                    std::os::unix::fs::MetadataExt::ino(&want),
                    "{path}"
                );
            }
        }
        // More links than the kernel follows, fewer than MAX_LINKS: both ways open it.
        symlink(".", root.path().join("self")).unwrap();
        let long = "self/".repeat(60) + "bin/sh";
        for kernel in [false, true] {
            assert!(root
                .open_by(Path::new(&long), OFlag::O_RDONLY, kernel)
                .is_ok());
        }
        for kernel in [false, true] {
            let missing = root.open_by(Path::new("/escape/passwd"), OFlag::O_RDONLY, kernel);
            assert!(
                matches!(missing, Err(InRootError::NotFound(_))),
                "{missing:?}"
            );
            let looped = root.open_by(Path::new("/loop"), OFlag::O_RDONLY, kernel);
            assert!(matches!(looped, Err(InRootError::Loop(_))), "{looped:?}");
        }
        // The kernel is expected to have it on the machines the tests run on (Linux 5.6+).
        if std::env::var_os("CI").is_some() {
            assert!(openat2_works(), "openat2 is refused here");
        }
    }
}
