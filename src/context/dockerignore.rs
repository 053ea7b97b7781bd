//! `.dockerignore` files and the glob matcher they share with COPY sources.
//!
//! The syntax is that of moby's patternmatcher, not gitignore: every pattern is matched
//! against the whole path relative to the context root, `*`, `?` and `[...]` work as in Go's
//! `filepath.Match` (never crossing a `/`), `**` matches any number of path components, a
//! path is matched when the pattern matches it or any of its parent directories, and the
//! last matching pattern decides (a leading `!` re-includes).

use anyhow::{anyhow, bail, Context, Result};

/// True when `path` (slash-separated, relative, cleaned) matches `pattern` (dockerignore
/// syntax, `**` included). The pattern is cleaned first, like the ones in `.dockerignore`.
/// Err for a malformed pattern (e.g. an unclosed `[`).
pub fn glob_match(pattern: &str, path: &str) -> Result<bool> {
    let cleaned = clean_pattern(pattern);
    Ok(Glob::parse(&cleaned, true)?.matches(path))
}

/// The patterns of one `.dockerignore` file, in file order.
#[derive(Debug, Default)]
pub struct Ignore {
    patterns: Vec<Pattern>,
}

#[derive(Debug)]
struct Pattern {
    glob: Glob,
    /// The cleaned pattern text, without the `!`.
    text: String,
    /// A `!` pattern: re-includes what it matches.
    exception: bool,
}

impl Ignore {
    /// Parses the content of a `.dockerignore` file. Err names the line of a malformed pattern.
    pub fn parse(text: &str) -> Result<Ignore> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (i, line) in text.split('\n').enumerate() {
            // As in moby: a comment is a line whose very first character is `#`.
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (exception, rest) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if rest.is_empty() {
                bail!("line {}: {line:?} is not a valid pattern", i + 1);
            }
            let text = clean_pattern(rest);
            let glob = Glob::parse(&text, true).with_context(|| format!("line {}", i + 1))?;
            patterns.push(Pattern {
                glob,
                text,
                exception,
            });
        }
        Ok(Ignore { patterns })
    }

    /// True when there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// True when `rel` (relative to the context root, slash-separated, cleaned) is excluded:
    /// the last pattern matching it or one of its parent directories is not an exception.
    /// The root itself (`""`) is never excluded.
    pub fn is_excluded(&self, rel: &str) -> bool {
        if rel.is_empty() {
            return false;
        }
        let mut excluded = false;
        for p in &self.patterns {
            // Only a pattern that would change the verdict needs to be tried.
            if p.exception != excluded {
                continue;
            }
            let hit = p.glob.matches(rel)
                || rel
                    .match_indices('/')
                    .any(|(i, _)| p.glob.matches(&rel[..i]));
            if hit {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// True when an exception pattern might re-include something below the excluded
    /// directory `dir`, so that it has to be descended into. Conservative: any exception with
    /// a wildcard counts.
    pub fn may_include_below(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            p.text.contains(['*', '?', '[', '\\']) || format!("{}/", p.text).starts_with(&dir_slash)
        })
    }
}

/// Cleans a pattern the way moby does: Go's `filepath.Clean`, then a leading `/` removed.
fn clean_pattern(pattern: &str) -> String {
    let cleaned = go_clean(pattern);
    match cleaned.strip_prefix('/') {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => cleaned,
    }
}

/// Go's `filepath.Clean` for slash-separated paths: collapses `//`, drops `.`, resolves `..`
/// lexically (kept at the start of a relative path, dropped at the root); "" becomes ".".
fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match out.last() {
                Some(&last) if last != ".." => {
                    out.pop();
                }
                _ if rooted => {}
                _ => out.push(".."),
            },
            _ => out.push(part),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// One piece of a compiled pattern.
#[derive(Debug, Clone)]
enum Tok {
    /// A character standing for itself.
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `[...]`: one character other than `/` that is (or, negated, is not) in the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**` with more pattern after it: any number of leading components, `(.*/)?`.
    AnyDirs,
    /// `**` ending the pattern: anything at all.
    Rest,
}

impl Tok {
    /// For the tokens that consume exactly one character: whether they accept `c`.
    fn accepts(&self, c: char) -> bool {
        match self {
            Tok::Lit(l) => *l == c,
            Tok::One => c != '/',
            Tok::Class { negated, ranges } => {
                c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
            Tok::Star | Tok::AnyDirs | Tok::Rest => false,
        }
    }
}

/// A compiled glob pattern.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    toks: Vec<Tok>,
}

impl Glob {
    /// Compiles `pattern`. With `double_star`, `**` has its dockerignore meaning; without it
    /// (Go's `filepath.Match`, used for COPY source components) it is just two `*`.
    pub(crate) fn parse(pattern: &str, double_star: bool) -> Result<Glob> {
        let bad = |why: &str| anyhow!("bad pattern {pattern:?}: {why}");
        let mut toks = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let tok = match c {
                '*' if double_star && chars.peek() == Some(&'*') => {
                    chars.next();
                    if chars.peek() == Some(&'/') {
                        chars.next();
                    }
                    if chars.peek().is_none() {
                        Tok::Rest
                    } else {
                        Tok::AnyDirs
                    }
                }
                '*' => Tok::Star,
                '?' => Tok::One,
                '\\' => Tok::Lit(chars.next().ok_or_else(|| bad("trailing \\"))?),
                '[' => {
                    let negated = chars.peek() == Some(&'^');
                    if negated {
                        chars.next();
                    }
                    let mut ranges = Vec::new();
                    // One class character, maybe escaped; `-` and `]` must be escaped.
                    let class_char =
                        |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| match chars.next() {
                            None => Err(bad("unclosed [")),
                            Some('-') | Some(']') => Err(bad("unescaped - or ] in [...]")),
                            Some('\\') => chars.next().ok_or_else(|| bad("unclosed [")),
                            Some(c) => Ok(c),
                        };
                    loop {
                        if chars.peek() == Some(&']') && !ranges.is_empty() {
                            chars.next();
                            break;
                        }
                        let lo = class_char(&mut chars)?;
                        let hi = if chars.peek() == Some(&'-') {
                            chars.next();
                            class_char(&mut chars)?
                        } else {
                            lo
                        };
                        ranges.push((lo, hi));
                    }
                    Tok::Class { negated, ranges }
                }
                c => Tok::Lit(c),
            };
            toks.push(tok);
        }
        Ok(Glob { toks })
    }

    /// True when the pattern matches all of `s`.
    pub(crate) fn matches(&self, s: &str) -> bool {
        let s: Vec<char> = s.chars().collect();
        let n = s.len();
        // `next[j]`: whether the tokens after the current one match `s[j..]`. Filled from the
        // last token backwards, so the whole match is linear in tokens times characters.
        let mut next = vec![false; n + 1];
        next[n] = true;
        for tok in self.toks.iter().rev() {
            let mut cur = vec![false; n + 1];
            match tok {
                Tok::Rest => {
                    let mut any = false;
                    for j in (0..=n).rev() {
                        any |= next[j];
                        cur[j] = any;
                    }
                }
                Tok::Star => {
                    cur[n] = next[n];
                    for j in (0..n).rev() {
                        cur[j] = next[j] || (s[j] != '/' && cur[j + 1]);
                    }
                }
                Tok::AnyDirs => {
                    // Either nothing, or any run of characters ending with a `/`.
                    let mut after_slash = false;
                    for j in (0..=n).rev() {
                        if j < n && s[j] == '/' && next[j + 1] {
                            after_slash = true;
                        }
                        cur[j] = next[j] || after_slash;
                    }
                }
                single => {
                    for j in 0..n {
                        cur[j] = next[j + 1] && single.accepts(s[j]);
                    }
                }
            }
            next = cur;
        }
        next[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        glob_match(p, s).unwrap()
    }

    #[test]
    fn single_component_wildcards() {
        assert!(m("*.txt", "a.txt"));
        assert!(m("*.txt", ".txt"));
        assert!(!m("*.txt", "dir/a.txt"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "a/c"));
        assert!(!m("a?c", "ac"));
        assert!(m("[abc]x", "bx"));
        assert!(!m("[abc]x", "dx"));
        assert!(m("[a-c]x", "cx"));
        assert!(m("[^a-c]x", "dx"));
        assert!(!m("[^a-c]x", "ax"));
        assert!(!m("a[^b]c", "a/c"));
        assert!(m("[\\]]", "]"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("a]", "a]"));
        assert!(m("é?", "éü"));
    }

    #[test]
    fn double_star() {
        assert!(m("**", "a/b/c"));
        assert!(m("**/foo", "foo"));
        assert!(m("**/foo", "a/b/foo"));
        assert!(!m("**/foo", "a/xfoo"));
        assert!(m("foo/**", "foo/x/y"));
        assert!(!m("foo/**", "foo"));
        assert!(m("a/**/b", "a/b"));
        assert!(m("a/**/b", "a/x/y/b"));
        assert!(!m("a/**/b", "a/xb"));
        assert!(m("**/*.go", "x/y/z.go"));
        assert!(m("**/*.go", "z.go"));
    }

    #[test]
    fn malformed_patterns() {
        for p in ["[", "[a", "a[", "[]", "[-a]", "[a-]", "x\\", "[\\"] {
            assert!(glob_match(p, "a").is_err(), "{p}");
        }
    }

    #[test]
    fn no_double_star_in_filepath_match() {
        let g = Glob::parse("**.rs", false).unwrap();
        assert!(g.matches("a.rs"));
        let g = Glob::parse("**", false).unwrap();
        assert!(!g.matches("a/b"));
    }

    #[test]
    fn cleaning() {
        assert_eq!(go_clean("a//b/./c/.."), "a/b");
        assert_eq!(go_clean("../a"), "../a");
        assert_eq!(go_clean("/../a"), "/a");
        assert_eq!(go_clean(""), ".");
        assert_eq!(go_clean("./"), ".");
        assert_eq!(clean_pattern("/foo/"), "foo");
        assert_eq!(clean_pattern("/"), "/");
        assert_eq!(clean_pattern("./x"), "x");
    }

    #[test]
    fn comments_blank_lines_and_cleaning() {
        let ig = Ignore::parse("# comment\n\n  \n/secret\n./build//out\n*.log\r\n").unwrap();
        assert!(ig.is_excluded("secret"));
        assert!(ig.is_excluded("build/out"));
        assert!(ig.is_excluded("x.log"));
        assert!(!ig.is_excluded("dir/x.log"));
        assert!(!ig.is_excluded("# comment"));
        assert!(!ig.is_excluded(""));
    }

    #[test]
    fn parent_directories_match() {
        let ig = Ignore::parse("node_modules\na/*/c").unwrap();
        assert!(ig.is_excluded("node_modules"));
        assert!(ig.is_excluded("node_modules/x/y.js"));
        assert!(ig.is_excluded("a/b/c/d"));
        assert!(!ig.is_excluded("a/b/d"));
    }

    #[test]
    fn last_match_wins() {
        let ig = Ignore::parse("*.md\n!README.md\nREADME.md").unwrap();
        assert!(ig.is_excluded("README.md"));
        let ig = Ignore::parse("*.md\n!README.md").unwrap();
        assert!(!ig.is_excluded("README.md"));
        assert!(ig.is_excluded("CHANGES.md"));
        let ig = Ignore::parse("docs\n!docs/keep\n").unwrap();
        assert!(ig.is_excluded("docs"));
        assert!(ig.is_excluded("docs/other"));
        assert!(!ig.is_excluded("docs/keep"));
        assert!(!ig.is_excluded("docs/keep/inner"));
    }

    #[test]
    fn double_star_in_ignore_files() {
        let ig = Ignore::parse("**/*.tmp\nlogs/**\na/**/z").unwrap();
        assert!(ig.is_excluded("x.tmp"));
        assert!(ig.is_excluded("p/q/x.tmp"));
        assert!(ig.is_excluded("logs/today"));
        assert!(!ig.is_excluded("logs"));
        assert!(ig.is_excluded("a/z"));
        assert!(ig.is_excluded("a/b/c/z/inner"));
        assert!(!ig.is_excluded("b/z"));
    }

    #[test]
    fn may_include_below() {
        let ig = Ignore::parse("docs\n!docs/keep/file").unwrap();
        assert!(ig.may_include_below("docs"));
        assert!(ig.may_include_below("docs/keep"));
        assert!(!ig.may_include_below("docs/other"));
        assert!(!ig.may_include_below("doc"));
        let ig = Ignore::parse("docs\n!**/*.md").unwrap();
        assert!(ig.may_include_below("docs/other"));
        let ig = Ignore::parse("docs").unwrap();
        assert!(!ig.may_include_below("docs"));
    }

    #[test]
    fn bad_ignore_files() {
        assert!(Ignore::parse("ok\n!\n").is_err());
        let err = Ignore::parse("ok\n[oops\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }
}
