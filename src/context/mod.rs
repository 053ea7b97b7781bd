//! The build context: a directory (or a tar stream extracted into a temporary one), the
//! `.dockerignore` patterns that apply to it, and the resolution of COPY/ADD sources inside
//! it.
//!
//! The context is never written to and nothing outside its root is ever read through it:
//! paths are resolved component by component with symbolic links confined to the root, as
//! if it were a chroot. Only what a step asks for is looked at; there is no up-front walk.

pub mod digest;
pub mod dockerignore;
mod extract;

pub use extract::{Declared, Device};

use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use walkdir::WalkDir;

use dockerignore::{Glob, Ignore};

use crate::inroot::{InRootError, Root, Rules};

/// The most of an ignore file rbuild reads.
const IGNORE_FILE_LIMIT: u64 = 16 << 20;

/// A build context (or another source tree a COPY reads from).
#[derive(Debug)]
pub struct BuildContext {
    /// Canonical root directory.
    root: PathBuf,
    /// The root, opened: every source is resolved inside it by descriptors.
    dir: Root,
    ignore: Ignore,
    /// How the root is named in error messages.
    label: &'static str,
    /// The extraction directory of a context that came as a tar stream.
    _extracted: Option<extract::Extracted>,
}

/// What a path on disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A fifo, socket or device.
    Other,
}

/// One file or directory a COPY/ADD source resolved to.
#[derive(Debug, Clone)]
pub struct SourceMatch {
    /// The cleaned path as written (wildcards replaced by the names they matched), relative
    /// to the root, `/`-separated; "" for the root itself.
    pub rel_path: String,
    /// Where it really is, symbolic links resolved; always inside the root.
    pub host_path: PathBuf,
    /// The kind of what `host_path` is (never `Symlink`: links are followed).
    pub kind: EntryKind,
}

/// One entry below a directory match.
#[derive(Debug, Clone)]
pub struct WalkEntry {
    /// Path relative to the matched directory, `/`-separated.
    pub rel_path: String,
    /// The entry on disk.
    pub host_path: PathBuf,
    /// The entry's own metadata (symbolic links not followed).
    pub metadata: fs::Metadata,
}

/// Why a path did not resolve to something usable.
enum Miss {
    NotFound,
    NotDir,
    Excluded,
    Loop,
    Other(anyhow::Error),
}

/// A resolved path: its real components below the root and the metadata of what is there.
struct Found {
    real: Vec<OsString>,
    meta: fs::Metadata,
}

impl BuildContext {
    /// Context from a directory. `dockerfile` = path of the Dockerfile used (for
    /// `<Dockerfile>.dockerignore`), None = none given.
    pub fn from_dir(dir: &Path, dockerfile: Option<&Path>) -> Result<BuildContext> {
        let mut ctx = Self::unfiltered(dir)?;
        ctx.label = "the build context";
        let specific = match dockerfile {
            Some(df) => {
                let mut name = df.as_os_str().to_os_string();
                name.push(".dockerignore");
                let path = PathBuf::from(name);
                read_host_file(&path)?.map(|text| (text, path.display().to_string()))
            }
            None => None,
        };
        let text = match specific {
            Some(t) => Some(t),
            None => ctx
                .read_inside(".dockerignore")?
                .map(|t| (t, dir.join(".dockerignore").display().to_string())),
        };
        if let Some((text, name)) = text {
            ctx.ignore = Ignore::parse(&text).with_context(|| format!("invalid {name}"))?;
        }
        Ok(ctx)
    }

    /// A view of a directory with no ignore file applied at all (used for
    /// `COPY --from=<stage>`, the stage's root filesystem).
    pub fn unfiltered(dir: &Path) -> Result<BuildContext> {
        let root =
            fs::canonicalize(dir).with_context(|| format!("cannot open {}", dir.display()))?;
        if !root.is_dir() {
            bail!("{} is not a directory", dir.display());
        }
        Ok(BuildContext {
            dir: Root::open_dir(&root)?,
            root,
            ignore: Ignore::default(),
            label: "the source directory",
            _extracted: None,
        })
    }

    /// Context from a tar stream (plain or gzip-compressed), extracted into a new temporary
    /// directory under `tmp_parent` that is removed when the context is dropped.
    /// `dockerfile` = the Dockerfile's path inside the tar (None = "Dockerfile"), for
    /// `<Dockerfile>.dockerignore`.
    pub fn from_tar<R: std::io::Read>(
        r: R,
        tmp_parent: &Path,
        dockerfile: Option<&str>,
    ) -> Result<BuildContext> {
        let extracted = extract::extract(r, tmp_parent)?;
        let root = fs::canonicalize(extracted.path())
            .with_context(|| format!("cannot open {}", extracted.path().display()))?;
        let mut ctx = BuildContext {
            dir: Root::open_dir(&root)?,
            root,
            ignore: Ignore::default(),
            label: "the build context",
            _extracted: Some(extracted),
        };
        let specific = format!(
            "{}.dockerignore",
            clean_components(dockerfile.unwrap_or("Dockerfile")).join("/")
        );
        let text = match ctx.read_inside(&specific)? {
            Some(t) => Some((t, specific)),
            None => ctx
                .read_inside(".dockerignore")?
                .map(|t| (t, ".dockerignore".to_string())),
        };
        if let Some((text, name)) = text {
            ctx.ignore =
                Ignore::parse(&text).with_context(|| format!("invalid {name} in the context"))?;
        }
        Ok(ctx)
    }

    /// The root directory on disk.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What a context sent as a tar says of the entry at `host` (below the root) where
    /// the disk holds something else: a directory's real mode, a device node.
    pub fn declared(&self, host: &Path) -> Option<Declared> {
        let rel = host.strip_prefix(&self.root).ok()?;
        self._extracted.as_ref()?.declared(rel)
    }

    /// Resolves one COPY/ADD source as written in the Dockerfile (after variable
    /// expansion): cleaned, wildcards expanded (matches in path order), symbolic links
    /// followed inside the root, entries excluded by `.dockerignore` left out.
    pub fn resolve(&self, src: &str) -> Result<Vec<SourceMatch>> {
        let found = self.resolve_some(src)?;
        if found.is_empty() {
            bail!("source {src:?}: no files in {} match", self.label);
        }
        Ok(found)
    }

    /// As [`BuildContext::resolve`], but a wildcard that matches nothing gives no match
    /// rather than an error: `COPY nomatch* one.txt /d/` copies what the other sources
    /// match, as BuildKit does.
    pub fn resolve_some(&self, src: &str) -> Result<Vec<SourceMatch>> {
        let trailing_slash = src.ends_with('/');
        let comps = clean_components(src);
        if !comps.iter().any(|c| has_meta(c)) {
            let found = self
                .lookup(Vec::new(), comps.iter().map(OsString::from))
                .and_then(|f| self.accept(f, comps.join("/"), trailing_slash))
                .map_err(|m| self.miss_error(src, m))?;
            return Ok(vec![found]);
        }

        let root_meta = fs::metadata(&self.root)
            .with_context(|| format!("cannot open {}", self.root.display()))?;
        let mut cands = vec![(
            String::new(),
            Found {
                real: Vec::new(),
                meta: root_meta,
            },
        )];
        for (i, comp) in comps.iter().enumerate() {
            let mut next = Vec::new();
            let glob = if has_meta(comp) {
                Some(Glob::parse(comp, false).with_context(|| format!("source {src:?}"))?)
            } else {
                None
            };
            for (lexical, found) in cands {
                let names = match &glob {
                    Some(g) => self.list_matching(&found.real, g)?,
                    None => vec![OsString::from(comp)],
                };
                for name in names {
                    let shown = join_rel(&lexical, &name.to_string_lossy());
                    match self.lookup(found.real.clone(), [name]) {
                        Ok(f) => next.push((shown, f)),
                        Err(Miss::Other(e)) => return Err(e.context(format!("source {src:?}"))),
                        Err(_) => {}
                    }
                }
            }
            if i + 1 < comps.len() {
                // Only directories lead anywhere; excluded ones only if something below
                // them may be re-included.
                next.retain(|(_, f)| {
                    let rel = rel_string(&f.real);
                    f.meta.is_dir()
                        && (!self.ignore.is_excluded(&rel) || self.ignore.may_include_below(&rel))
                });
            }
            cands = next;
        }
        let mut out = Vec::new();
        for (lexical, found) in cands {
            match self.accept(found, lexical, trailing_slash) {
                Ok(m) => out.push(m),
                Err(Miss::Other(e)) => return Err(e.context(format!("source {src:?}"))),
                Err(_) => {}
            }
        }
        Ok(out)
    }

    /// Whether `.dockerignore` leaves out anything below a matched directory (so the
    /// directory as it is on disk shows more than the build may see).
    pub fn excludes_below(&self, m: &SourceMatch) -> Result<bool> {
        if self.ignore.is_empty() || m.kind != EntryKind::Dir {
            return Ok(false);
        }
        for entry in walkdir::WalkDir::new(&m.host_path).min_depth(1) {
            let entry = entry.with_context(|| format!("cannot read {:?}", m.rel_path))?;
            if self.ignore.is_excluded(&self.rel_of_host(entry.path())?) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Everything below a matched directory, parents before children, sorted by name at each
    /// level; excludes the directory itself; skips ignored entries (an excluded directory is
    /// still listed when something below it is re-included). Symbolic links are not followed.
    pub fn walk(&self, m: &SourceMatch) -> Result<Vec<WalkEntry>> {
        if m.kind != EntryKind::Dir {
            bail!("{:?} is not a directory", m.rel_path);
        }
        let rel = self.rel_of_host(&m.host_path)?;
        self.walk_dir(&m.host_path, &rel, false)
            .with_context(|| format!("cannot read {:?} in {}", m.rel_path, self.label))
    }

    /// The entries below `dir` (whose path relative to the root is `dir_rel`) that are not
    /// excluded, with the excluded directories leading to them; with `first_only`, stops
    /// after the first included entry.
    fn walk_dir(&self, dir: &Path, dir_rel: &str, first_only: bool) -> Result<Vec<WalkEntry>> {
        let mut out = Vec::new();
        // Excluded directories not listed yet, with their depth: listed when something
        // below them is.
        let mut pending: Vec<(usize, WalkEntry)> = Vec::new();
        let mut it = WalkDir::new(dir)
            .follow_links(false)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter();
        while let Some(entry) = it.next() {
            let entry = entry?;
            let rel_path = match entry.path().strip_prefix(dir) {
                Ok(p) => rel_string(p.components().map(|c| c.as_os_str())),
                Err(_) => bail!("{} is outside {}", entry.path().display(), dir.display()),
            };
            let is_dir = entry.file_type().is_dir();
            let depth = entry.depth();
            let e = WalkEntry {
                metadata: entry.metadata()?,
                host_path: entry.into_path(),
                rel_path,
            };
            if !self.ignore.is_empty() {
                pending.retain(|(d, _)| *d < depth);
                let root_rel = join_rel(dir_rel, &e.rel_path);
                if self.ignore.is_excluded(&root_rel) {
                    if !is_dir {
                        continue;
                    }
                    if self.ignore.may_include_below(&root_rel) {
                        pending.push((depth, e));
                    } else {
                        it.skip_current_dir();
                    }
                    continue;
                }
                out.extend(pending.drain(..).map(|(_, p)| p));
            }
            out.push(e);
            if first_only {
                break;
            }
        }
        Ok(out)
    }

    /// Resolves `comps` starting from the real directory `base`, following symbolic links
    /// with the root as `/` ([`crate::inroot`]); a link whose own path `.dockerignore`
    /// excludes leads nowhere.
    fn lookup(
        &self,
        base: Vec<OsString>,
        comps: impl IntoIterator<Item = OsString>,
    ) -> Result<Found, Miss> {
        let mut path: PathBuf = base.into_iter().collect();
        path.extend(comps);
        let r = self
            .dir
            .resolve(&path, Rules::chroot(true))
            .map_err(|e| match e {
                InRootError::NotDir(_) => Miss::NotDir,
                InRootError::Loop(_) => Miss::Loop,
                e => Miss::Other(e.into()),
            })?;
        if r.links
            .iter()
            .any(|l| self.ignore.is_excluded(&rel_string(l)))
        {
            return Err(Miss::Excluded);
        }
        let Some(fd) = r.fd else {
            return Err(Miss::NotFound);
        };
        let meta = fs::File::from(fd)
            .metadata()
            .map_err(|e| Miss::Other(e.into()))?;
        let real = r.rel.iter().map(OsString::from).collect();
        Ok(Found { real, meta })
    }

    /// Turns a resolved path into a match, checking the trailing slash and `.dockerignore`.
    fn accept(
        &self,
        found: Found,
        rel_path: String,
        trailing_slash: bool,
    ) -> Result<SourceMatch, Miss> {
        let kind = kind_of(found.meta.file_type());
        if trailing_slash && kind != EntryKind::Dir {
            return Err(Miss::NotDir);
        }
        let real_rel = rel_string(&found.real);
        let host_path = self.host(&found.real);
        if self.ignore.is_excluded(&real_rel) {
            // An excluded directory is still there when something below it is re-included.
            let kept = kind == EntryKind::Dir
                && self.ignore.may_include_below(&real_rel)
                && !self
                    .walk_dir(&host_path, &real_rel, true)
                    .map_err(Miss::Other)?
                    .is_empty();
            if !kept {
                return Err(Miss::Excluded);
            }
        }
        Ok(SourceMatch {
            rel_path,
            host_path,
            kind,
        })
    }

    /// The names in the real directory `dir` that `glob` matches, sorted.
    fn list_matching(&self, dir: &[OsString], glob: &Glob) -> Result<Vec<OsString>> {
        let host = self.host(dir);
        let read = || format!("cannot list {}", host.display());
        let mut names = Vec::new();
        for e in fs::read_dir(&host).with_context(read)? {
            let name = e.with_context(read)?.file_name();
            if glob.matches(&name.to_string_lossy()) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Reads a regular file at `rel` inside the root (symbolic links confined); None when
    /// there is nothing there.
    fn read_inside(&self, rel: &str) -> Result<Option<String>> {
        match self.dir.read_file(Path::new(rel), IGNORE_FILE_LIMIT) {
            Ok(bytes) => Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned())),
            Err(InRootError::NotRegular(_)) => {
                bail!("{rel} in {} is not a regular file", self.label)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {rel}")),
        }
    }

    fn host(&self, real: &[OsString]) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(real);
        p
    }

    /// The path of `host` relative to the root, checked to be below it.
    fn rel_of_host(&self, host: &Path) -> Result<String> {
        let outside = || anyhow!("{} is outside {}", host.display(), self.label);
        let rel = host.strip_prefix(&self.root).map_err(|_| outside())?;
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => parts.push(n),
                Component::CurDir => {}
                _ => return Err(outside()),
            }
        }
        Ok(rel_string(parts))
    }

    fn miss_error(&self, src: &str, miss: Miss) -> anyhow::Error {
        let label = self.label;
        match miss {
            Miss::NotFound => anyhow!("source {src:?}: not found in {label}"),
            Miss::NotDir => anyhow!("source {src:?}: not a directory"),
            Miss::Excluded => anyhow!("source {src:?} is excluded by .dockerignore"),
            Miss::Loop => anyhow!("source {src:?}: too many levels of symbolic links"),
            Miss::Other(e) => e.context(format!("source {src:?}")),
        }
    }
}

fn kind_of(ft: fs::FileType) -> EntryKind {
    if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    }
}

/// The components of a source path cleaned lexically: leading `/`, empty parts and `.`
/// dropped, `..` resolved without ever climbing above the root.
fn clean_components(src: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for part in src.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out
}

/// True when a source path component is a pattern rather than a plain name.
fn has_meta(comp: &str) -> bool {
    comp.contains(['*', '?', '[', '\\'])
}

/// Joins path components with `/`, lossily for names that are not UTF-8.
fn rel_string<I, S>(parts: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    parts
        .into_iter()
        .map(|p| p.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn join_rel(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// Reads a file given by the user on the host; None when it does not exist.
fn read_host_file(path: &Path) -> Result<Option<String>> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => {
            let bytes =
                fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
        }
        Ok(_) => bail!("{} is not a regular file", path.display()),
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    /// A context directory with the given files ("name/" = directory).
    fn tree(entries: &[(&str, &str)]) -> TempDir {
        let t = TempDir::new().unwrap();
        for (name, content) in entries {
            let p = t.path().join(name);
            if name.ends_with('/') {
                fs::create_dir_all(&p).unwrap();
            } else {
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(&p, content).unwrap();
            }
        }
        t
    }

    fn rels(ms: &[SourceMatch]) -> Vec<&str> {
        ms.iter().map(|m| m.rel_path.as_str()).collect()
    }

    fn walk_rels(ctx: &BuildContext, src: &str) -> Vec<String> {
        let m = ctx.resolve(src).unwrap().remove(0);
        ctx.walk(&m)
            .unwrap()
            .into_iter()
            .map(|e| e.rel_path)
            .collect()
    }

    fn err(ctx: &BuildContext, src: &str) -> String {
        format!("{:#}", ctx.resolve(src).unwrap_err())
    }

    #[test]
    fn cleaning_stays_in_root() {
        let t = tree(&[("x", "1"), ("a/b", "2")]);
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        for src in ["../../x", "/x", "./x", "a/../x", "/../x", "a/../../x"] {
            let ms = ctx.resolve(src).unwrap();
            assert_eq!(rels(&ms), ["x"], "{src}");
            assert_eq!(ms[0].host_path, ctx.root().join("x"));
            assert_eq!(ms[0].kind, EntryKind::File);
        }
        for src in ["/", ".", "..", "", "a/.."] {
            let ms = ctx.resolve(src).unwrap();
            assert_eq!(rels(&ms), [""], "{src}");
            assert_eq!(ms[0].kind, EntryKind::Dir);
            assert_eq!(ms[0].host_path, ctx.root());
        }
        assert_eq!(rels(&ctx.resolve("a//b").unwrap()), ["a/b"]);
        assert_eq!(rels(&ctx.resolve("a/").unwrap()), ["a"]);
    }

    #[test]
    fn wildcards() {
        let t = tree(&[
            ("a.txt", ""),
            ("b.txt", ""),
            ("c.md", ""),
            ("[x]", ""),
            ("x", ""),
            ("sub/x.txt", ""),
            ("sub2/x.txt", ""),
            ("sub2/y.txt", ""),
        ]);
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        let r = |s: &str| -> Vec<String> {
            ctx.resolve(s)
                .unwrap()
                .into_iter()
                .map(|m| m.rel_path)
                .collect()
        };
        assert_eq!(r("*.txt"), ["a.txt", "b.txt"]);
        assert_eq!(r("/?.md"), ["c.md"]);
        assert_eq!(r("[ab].txt"), ["a.txt", "b.txt"]);
        assert_eq!(r("[^a].txt"), ["b.txt"]);
        assert_eq!(r("[a-b].t?t"), ["a.txt", "b.txt"]);
        assert_eq!(r("\\[x\\]"), ["[x]"]);
        assert_eq!(r("[x]"), ["x"]);
        assert_eq!(r("sub*/x.txt"), ["sub/x.txt", "sub2/x.txt"]);
        assert_eq!(r("*/*.txt"), ["sub/x.txt", "sub2/x.txt", "sub2/y.txt"]);
        assert_eq!(r("s*/"), ["sub", "sub2"]);
        let m = &ctx.resolve("sub2/y*").unwrap()[0];
        assert_eq!(m.host_path, ctx.root().join("sub2/y.txt"));
        assert!(ctx.resolve("[").is_err());
    }

    #[test]
    fn missing_no_match_and_not_a_directory() {
        let t = tree(&[("file", "")]);
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        let e = err(&ctx, "nope.txt");
        assert!(e.contains("\"nope.txt\"") && e.contains("not found"), "{e}");
        let e = err(&ctx, "*.nope");
        assert!(e.contains("\"*.nope\"") && e.contains("no files"), "{e}");
        let e = err(&ctx, "file/");
        assert!(e.contains("not a directory"), "{e}");
        let e = err(&ctx, "file/x");
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn dockerignore_excludes() {
        let t = tree(&[
            (
                ".dockerignore",
                "# comment\n*.log\n/secret\n./build\n!build/keep/\ndocs\n!docs/keep.md\n",
            ),
            ("a.log", ""),
            ("b.txt", ""),
            ("secret", ""),
            ("build/out/x", ""),
            ("build/keep/y", ""),
            ("docs/keep.md", ""),
            ("docs/other.md", ""),
            ("docs/deep/z", ""),
            ("src/x.log", ""),
        ]);
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        let e = err(&ctx, "a.log");
        assert!(
            e.contains("\"a.log\"") && e.contains("excluded by .dockerignore"),
            "{e}"
        );
        assert!(err(&ctx, "secret").contains("excluded"));
        assert!(err(&ctx, "build/out/x").contains("excluded"));
        assert!(err(&ctx, "docs/other.md").contains("excluded"));
        assert!(err(&ctx, "docs/deep").contains("excluded"));
        assert!(ctx.resolve("build/keep/y").is_ok());
        assert!(ctx.resolve("src/x.log").is_ok());
        // Wildcard matches that are excluded are simply not matches.
        assert_eq!(
            rels(&ctx.resolve("*.*").unwrap()),
            [".dockerignore", "b.txt"]
        );
        assert!(err(&ctx, "*.log").contains("no files"));
        // An excluded directory with a re-included file: the file and its parents.
        assert_eq!(walk_rels(&ctx, "docs"), ["keep.md"]);
        assert_eq!(
            walk_rels(&ctx, "."),
            [
                ".dockerignore",
                "b.txt",
                "build",
                "build/keep",
                "build/keep/y",
                "docs",
                "docs/keep.md",
                "src",
                "src/x.log"
            ]
        );
    }

    #[test]
    fn dockerfile_specific_ignore_file_wins() {
        let t = tree(&[
            (".dockerignore", "a\n"),
            ("docker/app.Dockerfile", ""),
            ("docker/app.Dockerfile.dockerignore", "b\n"),
            ("a", ""),
            ("b", ""),
        ]);
        let df = t.path().join("docker/app.Dockerfile");
        let ctx = BuildContext::from_dir(t.path(), Some(&df)).unwrap();
        assert!(ctx.resolve("a").is_ok());
        assert!(err(&ctx, "b").contains("excluded"));
        // Without a specific file the root one applies.
        let other = t.path().join("Dockerfile");
        let ctx = BuildContext::from_dir(t.path(), Some(&other)).unwrap();
        assert!(err(&ctx, "a").contains("excluded"));
        assert!(ctx.resolve("b").is_ok());
        // Unfiltered views ignore both.
        let ctx = BuildContext::unfiltered(t.path()).unwrap();
        assert!(ctx.resolve("a").is_ok() && ctx.resolve("b").is_ok());
        // A malformed ignore file is an error naming it.
        fs::write(t.path().join(".dockerignore"), "[\n").unwrap();
        let e = format!("{:#}", BuildContext::from_dir(t.path(), None).unwrap_err());
        assert!(e.contains(".dockerignore"), "{e}");
    }

    #[test]
    fn symlinks_named_directly_are_followed() {
        let t = tree(&[("real/f", "data"), ("file", "x")]);
        symlink("file", t.path().join("lf")).unwrap();
        symlink("real", t.path().join("ld")).unwrap();
        symlink("/real/f", t.path().join("abs")).unwrap();
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        let m = ctx.resolve("lf").unwrap().remove(0);
        assert_eq!((m.rel_path.as_str(), m.kind), ("lf", EntryKind::File));
        assert_eq!(m.host_path, ctx.root().join("file"));
        let m = ctx.resolve("ld/").unwrap().remove(0);
        assert_eq!((m.rel_path.as_str(), m.kind), ("ld", EntryKind::Dir));
        assert_eq!(m.host_path, ctx.root().join("real"));
        assert_eq!(
            ctx.walk(&m).unwrap()[0].host_path,
            ctx.root().join("real/f")
        );
        assert_eq!(
            ctx.resolve("ld/f").unwrap()[0].host_path,
            ctx.root().join("real/f")
        );
        assert_eq!(
            ctx.resolve("abs").unwrap()[0].host_path,
            ctx.root().join("real/f")
        );
        assert_eq!(rels(&ctx.resolve("l*").unwrap()), ["ld", "lf"]);
    }

    #[test]
    fn symlinks_cannot_escape_the_root() {
        let t = tree(&[("etc/passwd", "fake"), ("inner/x", "")]);
        symlink("/etc/passwd", t.path().join("p")).unwrap();
        symlink("../../..", t.path().join("up")).unwrap();
        symlink("../../../../../../../../../etc", t.path().join("inner/e")).unwrap();
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        let fake = ctx.root().join("etc/passwd");
        for src in [
            "p",
            "up/etc/passwd",
            "up/up/up/p",
            "inner/e/passwd",
            "u?/etc/passwd",
            "inner/*/passwd",
        ] {
            let ms = ctx.resolve(src).unwrap();
            assert_eq!(ms.len(), 1, "{src}");
            assert_ne!(ms[0].host_path, Path::new("/etc/passwd"), "{src}");
            assert_eq!(ms[0].host_path, fake, "{src}");
            assert_eq!(fs::read_to_string(&ms[0].host_path).unwrap(), "fake");
        }
        let m = ctx.resolve("up").unwrap().remove(0);
        assert_eq!(m.host_path, ctx.root());
        assert_eq!(m.kind, EntryKind::Dir);
        // Without a file of that name inside, it is simply not found.
        fs::remove_file(&fake).unwrap();
        assert!(err(&ctx, "p").contains("not found"));
        assert!(err(&ctx, "up/etc/passwd").contains("not found"));
    }

    #[test]
    fn an_ignore_file_that_is_a_fifo_is_refused_not_waited_on() {
        let t = tree(&[]);
        nix::unistd::mkfifo(
            &t.path().join(".dockerignore"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = BuildContext::from_dir(t.path(), None).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
    }

    #[test]
    fn dangling_and_looping_symlinks() {
        let t = tree(&[]);
        symlink("nowhere", t.path().join("dangling")).unwrap();
        symlink("loop2", t.path().join("loop1")).unwrap();
        symlink("loop1", t.path().join("loop2")).unwrap();
        symlink(".", t.path().join("self")).unwrap();
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        assert!(err(&ctx, "dangling").contains("not found"));
        assert!(err(&ctx, "loop1").contains("too many levels"));
        // A link back to its directory is fine, however often it is used.
        let deep = "self/".repeat(100) + "dangling";
        assert!(err(&ctx, &deep).contains("not found"));
    }

    #[test]
    fn symlinks_to_excluded_targets_are_excluded() {
        let t = tree(&[
            (".dockerignore", "secret\nhidden-link\n"),
            ("secret/key", "k"),
        ]);
        symlink("secret/key", t.path().join("link")).unwrap();
        symlink("x", t.path().join("hidden-link")).unwrap();
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        assert!(err(&ctx, "link").contains("excluded"));
        assert!(err(&ctx, "hidden-link/y").contains("excluded"));
    }

    #[test]
    fn walk_keeps_inner_symlinks() {
        let t = tree(&[("d/b/file", "x"), ("d/a", ""), ("outside", "o")]);
        symlink("../outside", t.path().join("d/b/link")).unwrap();
        symlink("/etc", t.path().join("d/etc")).unwrap();
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        let m = ctx.resolve("d").unwrap().remove(0);
        let entries = ctx.walk(&m).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.rel_path.as_str()).collect();
        assert_eq!(names, ["a", "b", "b/file", "b/link", "etc"]);
        for e in &entries[3..] {
            assert!(e.metadata.file_type().is_symlink());
            assert!(e.host_path.starts_with(ctx.root()));
        }
        // Walking a file match or a match outside the root is refused.
        let f = ctx.resolve("outside").unwrap().remove(0);
        assert!(ctx.walk(&f).is_err());
        let forged = SourceMatch {
            rel_path: String::new(),
            host_path: PathBuf::from("/etc"),
            kind: EntryKind::Dir,
        };
        assert!(ctx.walk(&forged).is_err());
    }

    #[test]
    fn walk_ignores_by_root_relative_path() {
        let t = tree(&[
            (".dockerignore", "app/*.log\n"),
            ("app/a.log", ""),
            ("app/b.txt", ""),
        ]);
        symlink("app", t.path().join("alias")).unwrap();
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        assert_eq!(walk_rels(&ctx, "app"), ["b.txt"]);
        assert_eq!(walk_rels(&ctx, "alias"), ["b.txt"]);
    }

    #[test]
    fn non_utf8_names() {
        use std::os::unix::ffi::OsStrExt;
        let t = tree(&[]);
        let name = std::ffi::OsStr::from_bytes(b"bad\xffname");
        fs::write(t.path().join(name), "x").unwrap();
        let ctx = BuildContext::from_dir(t.path(), None).unwrap();
        let m = ctx.resolve("bad*").unwrap().remove(0);
        assert_eq!(m.host_path, ctx.root().join(name));
        assert!(m.rel_path.starts_with("bad"));
        let e = ctx.walk(&ctx.resolve(".").unwrap()[0]).unwrap();
        assert_eq!(e[0].host_path, ctx.root().join(name));
    }

    /// One raw tar entry, bypassing the checks `tar::Builder` makes on names.
    fn raw(name: &[u8], kind: tar::EntryType, link: &[u8], mode: u32, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name);
        h.as_mut_bytes()[157..157 + link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = entries.concat();
        out.extend_from_slice(&[0; 1024]);
        out
    }

    use tar::EntryType as T;

    #[test]
    fn from_tar_gzip() {
        let tar = archive(&[
            raw(b"Dockerfile", T::Regular, b"", 0o644, b"FROM scratch\n"),
            raw(b"Dockerfile.dockerignore", T::Regular, b"", 0o644, b"b\n"),
            raw(b".dockerignore", T::Regular, b"", 0o644, b"a\n"),
            raw(b"./ro/", T::Directory, b"", 0o555, b""),
            raw(b"ro/x", T::Regular, b"", 0o4750, b"hello"),
            raw(b"ro/link", T::Symlink, b"x", 0o777, b""),
            raw(b"ro/hard", T::Link, b"ro/x", 0o644, b""),
            raw(b"a", T::Regular, b"", 0o644, b""),
            raw(b"b", T::Regular, b"", 0o644, b""),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let parent = TempDir::new().unwrap();
        let ctx = BuildContext::from_tar(&gz[..], parent.path(), None).unwrap();
        assert!(ctx
            .root()
            .starts_with(fs::canonicalize(parent.path()).unwrap()));
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // The owner keeps full access on disk; COPY gets the tar's mode.
        let ro = fs::symlink_metadata(ctx.root().join("ro")).unwrap();
        assert_eq!(ro.permissions().mode() & 0o7777, 0o755);
        assert_eq!(ctx.declared(&ctx.root().join("ro")).unwrap().mode, 0o555);
        let x = ctx.resolve("ro/x").unwrap().remove(0);
        assert_eq!(fs::read_to_string(&x.host_path).unwrap(), "hello");
        let xm = fs::metadata(&x.host_path).unwrap();
        assert_eq!(xm.permissions().mode() & 0o7777, 0o4750);
        assert_eq!((xm.mtime(), xm.nlink()), (1_600_000_000, 2));
        assert_eq!(ro.mtime(), 1_600_000_000);
        assert_eq!(
            fs::read_link(ctx.root().join("ro/link")).unwrap(),
            Path::new("x")
        );
        // Dockerfile.dockerignore wins over .dockerignore.
        assert!(ctx.resolve("a").is_ok());
        assert!(err(&ctx, "b").contains("excluded"));
        drop(ctx);
        assert_eq!(
            fs::read_dir(parent.path()).unwrap().count(),
            0,
            "temp dir left behind"
        );

        // Plain tar, a Dockerfile elsewhere: its ignore file is looked for next to it.
        let ctx =
            BuildContext::from_tar(&tar[..], parent.path(), Some("/sub/../Dockerfile")).unwrap();
        assert!(err(&ctx, "b").contains("excluded"));
        let ctx = BuildContext::from_tar(&tar[..], parent.path(), Some("other")).unwrap();
        assert!(err(&ctx, "a").contains("excluded"));
        assert!(ctx.resolve("b").is_ok());
    }

    /// Extracts `tar` under a fresh parent next to an `outside` directory; returns the error
    /// and asserts nothing was left anywhere.
    fn refused(entries: &[Vec<u8>], outside: &Path) -> String {
        let base = outside.parent().unwrap();
        let parent = base.join("parent");
        let e = BuildContext::from_tar(&archive(entries)[..], &parent, None).unwrap_err();
        assert_eq!(
            fs::read_dir(&parent).unwrap().count(),
            0,
            "extraction left files behind"
        );
        let mut names: Vec<_> = fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["outside", "parent"]);
        let mut inside: Vec<_> = fs::read_dir(outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        inside.sort();
        assert_eq!(inside, ["secret"], "something was written outside");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "s");
        format!("{e:#}")
    }

    #[test]
    fn from_tar_refuses_escapes() {
        let base = TempDir::new().unwrap();
        let outside = base.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        let out = outside.to_str().unwrap().as_bytes();
        let secret = outside.join("secret");
        let secret = secret.to_str().unwrap().as_bytes();

        let e = refused(&[raw(b"../evil", T::Regular, b"", 0o644, b"x")], &outside);
        assert!(e.contains("../evil"), "{e}");
        let e = refused(
            &[raw(
                b"a/../../../outside/secret",
                T::Regular,
                b"",
                0o644,
                b"x",
            )],
            &outside,
        );
        assert!(e.contains("outside the context"), "{e}");
        let e = refused(
            &[
                raw(b"link", T::Symlink, out, 0o777, b""),
                raw(b"link/pwned", T::Regular, b"", 0o644, b"x"),
            ],
            &outside,
        );
        assert!(
            e.contains("link/pwned") && e.contains("symbolic link"),
            "{e}"
        );
        let e = refused(
            &[
                raw(b"up", T::Symlink, b"../..", 0o777, b""),
                raw(b"up/outside/secret", T::Regular, b"", 0o644, b"x"),
            ],
            &outside,
        );
        assert!(e.contains("up/outside/secret"), "{e}");
        let e = refused(
            &[raw(b"hl", T::Link, b"../../outside/secret", 0o644, b"")],
            &outside,
        );
        assert!(e.contains("\"hl\"") && e.contains("hard link"), "{e}");
        let e = refused(&[raw(b"hl", T::Link, secret, 0o644, b"")], &outside);
        assert!(e.contains("\"hl\""), "{e}");
        let e = refused(
            &[
                raw(b"s", T::Symlink, out, 0o777, b""),
                raw(b"hl", T::Link, b"s/secret", 0o644, b""),
            ],
            &outside,
        );
        assert!(e.contains("\"hl\""), "{e}");
        let e = refused(
            &[
                raw(b"s", T::Symlink, secret, 0o777, b""),
                raw(b"s", T::Link, b"s", 0o644, b""),
                raw(b"s/x", T::Regular, b"", 0o644, b""),
            ],
            &outside,
        );
        assert!(e.contains("s/x"), "{e}");

        // An absolute name lands inside the context, with the leading `/` dropped.
        let parent = base.path().join("parent");
        let abs = outside.join("new");
        let tar = archive(&[raw(
            abs.to_str().unwrap().as_bytes(),
            T::Regular,
            b"",
            0o644,
            b"x",
        )]);
        let ctx = BuildContext::from_tar(&tar[..], &parent, None).unwrap();
        assert!(!abs.exists());
        let rel = abs.strip_prefix("/").unwrap();
        assert_eq!(fs::read_to_string(ctx.root().join(rel)).unwrap(), "x");
    }

    #[test]
    fn from_tar_later_entries_replace_earlier_ones() {
        let base = TempDir::new().unwrap();
        let tar = archive(&[
            raw(b"d/", T::Directory, b"", 0o700, b""),
            raw(b"d/f", T::Regular, b"", 0o644, b"old"),
            raw(b"d", T::Symlink, b"/tmp", 0o777, b""),
            raw(b"f", T::Regular, b"", 0o644, b"one"),
            raw(b"f", T::Regular, b"", 0o600, b"two"),
            raw(b"fifo", T::Fifo, b"", 0o644, b""),
        ]);
        let ctx = BuildContext::from_tar(&tar[..], base.path(), None).unwrap();
        assert!(fs::symlink_metadata(ctx.root().join("d"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(ctx.root().join("f")).unwrap(), "two");
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::symlink_metadata(ctx.root().join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
    }

    #[test]
    fn from_tar_bad_input() {
        let base = TempDir::new().unwrap();
        let junk: Vec<u8> = (0..2000u32).map(|i| (i * 7 + 3) as u8).collect();
        assert!(BuildContext::from_tar(&junk[..], base.path(), None).is_err());
        assert!(BuildContext::from_tar(&[0x1f, 0x8b, 1, 2][..], base.path(), None).is_err());
        let ctx = BuildContext::from_tar(&b""[..], base.path(), None).unwrap();
        assert!(err(&ctx, "Dockerfile").contains("not found"));
        drop(ctx);
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 0);
    }
}
