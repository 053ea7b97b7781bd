//! Word expansion with the semantics of BuildKit's shell lexer (`ProcessWord`/`ProcessWords`).
//!
//! Expansion takes a *snapshot* of the variables through [`Vars`]: for `ENV a=bye b=$a` the
//! caller decides what `$a` means (BuildKit expands every word of one ENV against the state
//! before the instruction, then applies the pairs in order), the lexer just looks names up.
//!
//! Supported forms: `$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`, `${V:?m}`, `${V?m}`,
//! `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}`, `${V/p/r}`, `${V//p/r}` (glob patterns with `*`, `?`,
//! `[...]`), single and double quotes, and the escape character (`\` or `` ` ``).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Variables visible to an instruction (a snapshot: lookups must not change during one word).
pub trait Vars {
    /// The value of `name`, or `None` when it is unset.
    fn get(&self, name: &str) -> Option<String>;
}

impl Vars for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Vars for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl<F: Fn(&str) -> Option<String>> Vars for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// The longest word an expansion may produce (bytes): `ARG A1=${A0}${A0}`, forty times
/// over, would otherwise grow without bound.
pub const MAX_WORD: usize = 1 << 20;
/// How deep `${...}` may nest in one word: the lexer recurses once per level.
pub const MAX_DEPTH: usize = 64;
/// What every expansion of one Dockerfile may produce in all (bytes): each word is
/// bounded by [`MAX_WORD`], but a million lines each storing a megabyte would not be.
pub const MAX_TOTAL: usize = 64 << 20;

thread_local! {
    /// What expansions on this thread may still produce (see [`set_budget`]).
    static BUDGET: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Gives expansions on this thread `bytes` to produce from now on (the planner sets
/// [`MAX_TOTAL`] before it expands a Dockerfile).
pub fn set_budget(bytes: usize) {
    BUDGET.with(|b| b.set(bytes));
}

/// Takes `n` bytes from this thread's budget.
fn spend(n: usize) -> Result<(), String> {
    BUDGET.with(|b| match b.get().checked_sub(n) {
        Some(left) => {
            b.set(left);
            Ok(())
        }
        None => Err(format!(
            "the Dockerfile's expansions produce more than {} MiB in all",
            MAX_TOTAL >> 20
        )),
    })
}

/// Steps of glob matching one `${V#p}`, `${V%p}` or `${V/p/r}` may take.
const MAX_GLOB_STEPS: u64 = 20_000_000;

/// An expansion failure (bad substitution syntax, unterminated quote, `${V:?}` on unset `V`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    /// Human-readable description, BuildKit style (`failed to process "...": ...`).
    pub message: String,
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExpandError {}

/// Processes one word: quote removal, escapes, variable substitution (BuildKit `ProcessWord`).
pub fn expand_word(word: &str, vars: &dyn Vars, escape: char) -> Result<String, ExpandError> {
    run(word, vars, escape, Mode::Word).map(|(s, _)| s)
}

/// Like [`expand_word`], but splits the result into fields on unquoted whitespace (BuildKit
/// `ProcessWords`); whitespace coming from an unquoted variable value also splits.
pub fn expand_words(word: &str, vars: &dyn Vars, escape: char) -> Result<Vec<String>, ExpandError> {
    run(word, vars, escape, Mode::Word).map(|(_, w)| w)
}

/// Expands a heredoc body whose delimiter was unquoted: only `$VAR`/`${...}` substitution, and
/// the escape character before `$` gives a literal `$`; quotes and other escapes stay as written.
pub fn expand_heredoc(body: &str, vars: &dyn Vars, escape: char) -> Result<String, ExpandError> {
    run(body, vars, escape, Mode::Heredoc).map(|(s, _)| s)
}

/// Names of the variables a word refers to, in first-use order without duplicates (including
/// names inside modifier words such as `${a:-$b}`); escaped and single-quoted `$` are ignored.
pub fn referenced_vars(word: &str, escape: char) -> Vec<String> {
    let none = |_: &str| None;
    let mut lx = Lexer::new(word, &none, escape, Mode::Word);
    lx.collect = Some(Vec::new());
    let _ = lx.process_stop_on(None, false);
    lx.collect.unwrap_or_default()
}

fn run(
    word: &str,
    vars: &dyn Vars,
    escape: char,
    mode: Mode,
) -> Result<(String, Vec<String>), ExpandError> {
    let mut lx = Lexer::new(word, vars, escape, mode);
    lx.process_stop_on(None, false)
        .and_then(|(s, w)| spend(s.len()).map(|()| (s, w.finish())))
        .map_err(|e| ExpandError {
            message: format!("failed to process {word:?}: {e}"),
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Full shell-word processing (quotes, escapes, substitution).
    Word,
    /// Heredoc body: quotes are ordinary characters, escape only matters before `$`.
    Heredoc,
}

/// Field splitting state (mirrors the way BuildKit splits `ProcessWords` results).
#[derive(Default)]
struct Fields {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Fields {
    /// An unquoted character: whitespace separates fields.
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }
    /// A quoted or escaped character: always part of the field.
    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }
    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }
    fn add_raw_str(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    vars: &'a dyn Vars,
    escape: char,
    mode: Mode,
    /// When set, names are recorded and `${V?}` never fails (for [`referenced_vars`]).
    collect: Option<Vec<String>>,
    /// How many `${...}` word parts are being processed (bounded by [`MAX_DEPTH`]).
    depth: usize,
}

type LexResult<T> = Result<T, String>;

impl<'a> Lexer<'a> {
    fn new(word: &str, vars: &'a dyn Vars, escape: char, mode: Mode) -> Self {
        Lexer {
            chars: word.chars().collect(),
            pos: 0,
            vars,
            escape,
            mode,
            collect: None,
            depth: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        if let Some(names) = self.collect.as_mut() {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            return None;
        }
        self.vars.get(name)
    }

    /// Processes up to `stop` (consumed) or the end of input; `raw_escapes` keeps escape
    /// characters in the output (for glob patterns, where they make the next char literal).
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> LexResult<(String, Fields)> {
        let mut out = String::new();
        let mut fields = Fields::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((out, fields));
            }
            match ch {
                '\'' | '"' if self.mode == Mode::Word => {
                    let s = if ch == '\'' {
                        self.single_quote()?
                    } else {
                        self.double_quote()?
                    };
                    out.push_str(&s);
                    fields.add_raw_str(&s);
                }
                '$' => {
                    let s = self.dollar()?;
                    if out.len() + s.len() > MAX_WORD {
                        return Err(format!("the expanded word is longer than {MAX_WORD} bytes"));
                    }
                    out.push_str(&s);
                    fields.add_str(&s);
                }
                _ => {
                    self.pos += 1;
                    if ch != self.escape {
                        out.push(ch);
                        fields.add_char(ch);
                        continue;
                    }
                    if self.mode == Mode::Heredoc && !raw_escapes && self.peek() != Some('$') {
                        out.push(ch);
                        fields.add_char(ch);
                        continue;
                    }
                    if raw_escapes {
                        out.push(ch);
                        fields.add_raw_char(ch);
                    }
                    match self.next() {
                        // An escape at the very end is dropped.
                        None => break,
                        Some(c) => {
                            out.push(c);
                            fields.add_raw_char(c);
                        }
                    }
                }
            }
        }
        match stop {
            Some(s) => Err(format!(
                "unexpected end of statement while looking for matching {s}"
            )),
            None => Ok((out, fields)),
        }
    }

    /// `'...'`: everything literal, no escapes.
    fn single_quote(&mut self) -> LexResult<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    /// `"..."`: `$` expands; the escape character only escapes `"`, `$` and itself.
    fn double_quote(&mut self) -> LexResult<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.pos += 1;
                                out.push(n);
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    /// A variable name: letters, digits, `_`; or a run of digits; or one special parameter.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                return c.to_string();
            }
            if !(c.is_alphanumeric() || c == '_') {
                break;
            }
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn dollar(&mut self) -> LexResult<String> {
        self.pos += 1; // '$'
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.lookup(&name).unwrap_or_default());
        }
        self.pos += 1; // '{'
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        if self.collect.is_some() {
            self.lookup(&name); // record in first-use order, before names in the word part
        }
        let Some(mut op) = self.next() else {
            return Err("syntax error: missing '}'".into());
        };
        let mut null_is_unset = false;
        let mut chs = op.to_string();
        match op {
            '}' => return Ok(self.lookup(&name).unwrap_or_default()),
            '/' => return self.replace(&name),
            ':' => {
                null_is_unset = true;
                match self.next() {
                    Some(c @ ('-' | '+' | '?')) => {
                        op = c;
                        chs.push(c);
                    }
                    Some(c) => {
                        chs.push(c);
                        return Err(format!("unsupported modifier ({chs}) in substitution"));
                    }
                    None => return Err("syntax error: missing '}'".into()),
                }
            }
            '-' | '+' | '?' | '#' | '%' => {}
            _ => return Err(format!("unsupported modifier ({chs}) in substitution")),
        }
        let pattern_op = op == '#' || op == '%';
        let (mut word, _) = self.sub_word('}', pattern_op, "syntax error: missing '}'")?;
        let value = self.lookup(&name);
        let unsetish = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        match op {
            '-' => Ok(if unsetish {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if unsetish { String::new() } else { word }),
            '?' => {
                if unsetish && self.collect.is_none() {
                    let what = if value.is_none() { "unset" } else { "empty" };
                    if word.is_empty() {
                        word = format!("is not allowed to be {what}");
                    }
                    return Err(format!("{name}: {word}"));
                }
                Ok(value.unwrap_or_default())
            }
            _ => {
                let value = value.unwrap_or_default();
                let mut greedy = false;
                if word.starts_with(op) {
                    greedy = true;
                    word.remove(0);
                }
                let glob = Glob::compile(&word, self.escape);
                if op == '#' {
                    glob.trim_prefix(&value, greedy)
                } else {
                    glob.trim_suffix(&value, greedy)
                }
            }
        }
    }

    /// The word part of `${...}` up to `stop`, reporting `missing` when input runs out.
    fn sub_word(&mut self, stop: char, raw: bool, missing: &str) -> LexResult<(String, Fields)> {
        if self.depth >= MAX_DEPTH {
            return Err(format!(
                "substitutions are nested more than {MAX_DEPTH} deep"
            ));
        }
        self.depth += 1;
        let done = self.process_stop_on(Some(stop), raw);
        self.depth -= 1;
        done.map_err(|e| {
            if self.peek().is_none() && !e.starts_with("substitutions are nested") {
                missing.to_string()
            } else {
                e
            }
        })
    }

    /// `${V/p/r}` and `${V//p/r}` (the leading `/` already consumed).
    fn replace(&mut self, name: &str) -> LexResult<String> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        let (pattern, _) = self.sub_word('/', true, "syntax error: missing '/' in ${}")?;
        let (replacement, _) = self.sub_word('}', false, "syntax error: missing '}'")?;
        let value = self.lookup(name).unwrap_or_default();
        Glob::compile(&pattern, self.escape).replace(&value, &replacement, all)
    }
}

/// One element of a glob pattern.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Star,
    Any,
    Lit(char),
    Class {
        negate: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled shell glob (`*`, `?`, `[...]`, escape char makes the next char literal),
/// with what is left of its matching budget ([`MAX_GLOB_STEPS`]).
struct Glob(Vec<Tok>, std::cell::Cell<u64>);

impl Glob {
    fn compile(pattern: &str, escape: char) -> Glob {
        let p: Vec<char> = pattern.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < p.len() {
            let c = p[i];
            i += 1;
            match c {
                '*' => toks.push(Tok::Star),
                '?' => toks.push(Tok::Any),
                '[' => match Self::class(&p, i) {
                    Some((tok, next)) => {
                        toks.push(tok);
                        i = next;
                    }
                    None => toks.push(Tok::Lit('[')),
                },
                c if c == escape && i < p.len() => {
                    toks.push(Tok::Lit(p[i]));
                    i += 1;
                }
                c => toks.push(Tok::Lit(c)),
            }
        }
        Glob(toks, std::cell::Cell::new(MAX_GLOB_STEPS))
    }

    /// Parses a bracket expression starting after `[`; `None` if it is not closed.
    fn class(p: &[char], mut i: usize) -> Option<(Tok, usize)> {
        let mut negate = false;
        if matches!(p.get(i), Some('!' | '^')) {
            negate = true;
            i += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let c = *p.get(i)?;
            if c == ']' && !first {
                return Some((Tok::Class { negate, ranges }, i + 1));
            }
            first = false;
            if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
                ranges.push((c, p[i + 2]));
                i += 3;
            } else {
                ranges.push((c, c));
                i += 1;
            }
        }
    }

    fn tok_matches(tok: &Tok, c: char) -> bool {
        match tok {
            Tok::Star | Tok::Any => true,
            Tok::Lit(l) => *l == c,
            Tok::Class { negate, ranges } => {
                ranges.iter().any(|&(a, b)| a <= c && c <= b) != *negate
            }
        }
    }

    /// Whether the whole of `s` matches (iterative, single backtrack point: O(len·pattern)).
    /// Runs out (false) when the budget is spent; [`Glob::spent`] then says so.
    fn matches(&self, s: &[char]) -> bool {
        let toks = &self.0;
        let (mut p, mut i) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while i < s.len() {
            if self.1.get() == 0 {
                return false;
            }
            self.1.set(self.1.get() - 1);
            if p < toks.len() {
                if toks[p] == Tok::Star {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                if Self::tok_matches(&toks[p], s[i]) {
                    p += 1;
                    i += 1;
                    continue;
                }
            }
            match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            }
        }
        toks[p.min(toks.len())..].iter().all(|t| *t == Tok::Star)
    }

    /// An error once the matching budget is spent (a long value and a costly pattern).
    fn spent(&self) -> LexResult<()> {
        if self.1.get() == 0 {
            return Err(format!(
                "pattern matching took more than {MAX_GLOB_STEPS} steps"
            ));
        }
        Ok(())
    }

    /// `${V#p}` (shortest) / `${V##p}` (longest): remove a matching prefix.
    fn trim_prefix(&self, value: &str, greedy: bool) -> LexResult<String> {
        let v: Vec<char> = value.chars().collect();
        let n = v.len();
        let found = if greedy {
            (0..=n).rev().find(|&k| self.matches(&v[..k]))
        } else {
            (0..=n).find(|&k| self.matches(&v[..k]))
        };
        self.spent()?;
        Ok(match found {
            Some(k) => v[k..].iter().collect(),
            None => value.to_string(),
        })
    }

    /// `${V%p}` (shortest) / `${V%%p}` (longest): remove a matching suffix.
    fn trim_suffix(&self, value: &str, greedy: bool) -> LexResult<String> {
        let v: Vec<char> = value.chars().collect();
        let n = v.len();
        let found = if greedy {
            (0..=n).find(|&k| self.matches(&v[k..]))
        } else {
            (0..=n).rev().find(|&k| self.matches(&v[k..]))
        };
        self.spent()?;
        Ok(match found {
            Some(k) => v[..k].iter().collect(),
            None => value.to_string(),
        })
    }

    /// `${V/p/r}` / `${V//p/r}`: replace the first (or every) leftmost-longest non-empty match.
    fn replace(&self, value: &str, replacement: &str, all: bool) -> LexResult<String> {
        if self.0.is_empty() {
            return Ok(value.to_string());
        }
        let v: Vec<char> = value.chars().collect();
        let n = v.len();
        let mut out = String::new();
        let mut pos = 0;
        let mut start = 0;
        while start < n {
            let end = (start + 1..=n).rev().find(|&e| self.matches(&v[start..e]));
            self.spent()?;
            match end {
                Some(e) => {
                    out.extend(&v[pos..start]);
                    out.push_str(replacement);
                    if out.len() > MAX_WORD {
                        return Err(format!("the expanded word is longer than {MAX_WORD} bytes"));
                    }
                    pos = e;
                    start = e;
                    if !all {
                        break;
                    }
                }
                None => start += 1,
            }
        }
        out.extend(&v[pos..]);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        [
            ("A", "hello"),
            ("E", ""),
            ("P", "/usr/local/bin/tool.tar.gz"),
            ("S", "a b  c"),
            ("X", "aXbXc"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn w(s: &str) -> String {
        expand_word(s, &env(), '\\').unwrap()
    }

    fn err(s: &str) -> String {
        expand_word(s, &env(), '\\').unwrap_err().message
    }

    #[test]
    fn simple_substitution() {
        assert_eq!(w("$A"), "hello");
        assert_eq!(w("${A}"), "hello");
        assert_eq!(w("x${A}y"), "xhelloy");
        assert_eq!(w("$A.txt"), "hello.txt");
        assert_eq!(w("$UNSET"), "");
        assert_eq!(w("${UNSET}x"), "x");
        assert_eq!(w("a$"), "a$");
        assert_eq!(w("$ a"), "$ a");
        assert_eq!(w("$%"), "$%");
        assert_eq!(w("$1"), "");
        assert_eq!(w("$1x"), "x");
        assert_eq!(w("$@"), "");
    }

    #[test]
    fn default_and_alternative() {
        assert_eq!(w("${A:-w}"), "hello");
        assert_eq!(w("${E:-w}"), "w");
        assert_eq!(w("${U:-w}"), "w");
        assert_eq!(w("${A-w}"), "hello");
        assert_eq!(w("${E-w}"), "");
        assert_eq!(w("${U-w}"), "w");
        assert_eq!(w("${A:+w}"), "w");
        assert_eq!(w("${E:+w}"), "");
        assert_eq!(w("${U:+w}"), "");
        assert_eq!(w("${A+w}"), "w");
        assert_eq!(w("${E+w}"), "w");
        assert_eq!(w("${U+w}"), "");
        assert_eq!(w("${U:-$A}"), "hello");
        assert_eq!(w("${U:-${E:-deep}}"), "deep");
        assert_eq!(w("${U:-a b}"), "a b");
        assert_eq!(w("${U:-\"q}\"}"), "q}");
        assert_eq!(w("${U:-}"), "");
    }

    #[test]
    fn required() {
        assert_eq!(w("${A:?oops}"), "hello");
        assert_eq!(w("${A?oops}"), "hello");
        assert_eq!(w("${E?oops}"), "");
        assert!(err("${U:?}").ends_with("U: is not allowed to be unset"));
        assert!(err("${E:?}").ends_with("E: is not allowed to be empty"));
        assert!(err("${U?custom msg}").ends_with("U: custom msg"));
        assert!(err("${E:?need it}").ends_with("E: need it"));
        assert!(err("${U?}").contains("failed to process"));
    }

    #[test]
    fn prefix_suffix_removal() {
        assert_eq!(w("${P#*/}"), "usr/local/bin/tool.tar.gz");
        assert_eq!(w("${P##*/}"), "tool.tar.gz");
        assert_eq!(w("${P%.*}"), "/usr/local/bin/tool.tar");
        assert_eq!(w("${P%%.*}"), "/usr/local/bin/tool");
        assert_eq!(w("${P#/usr}"), "/local/bin/tool.tar.gz");
        assert_eq!(w("${P#nomatch}"), "/usr/local/bin/tool.tar.gz");
        assert_eq!(w("${A#h?l}"), "lo");
        assert_eq!(w("${A%[lo]}"), "hell");
        assert_eq!(w("${A%%[!h]*}"), "h");
        assert_eq!(w("${A#[a-h]}"), "ello");
        assert_eq!(w("${U#x}"), "");
        assert_eq!(w(r"${X#a\X}"), "bXc");
        assert!(err("${A:#x}").contains("unsupported modifier (:#)"));
    }

    #[test]
    fn replacement() {
        assert_eq!(w("${X/X/-}"), "a-bXc");
        assert_eq!(w("${X//X/-}"), "a-b-c");
        assert_eq!(w("${X//[ab]/}"), "XXc");
        assert_eq!(w("${A/l*/p}"), "hep");
        assert_eq!(w("${A/z/p}"), "hello");
        assert_eq!(w("${A//l/$A}"), "hehellohelloo");
        assert_eq!(w("${U/a/b}"), "");
        assert!(err("${A/x").contains("missing '/'"));
        assert!(err("${A/x/y").contains("missing '}'"));
    }

    #[test]
    fn syntax_errors() {
        assert!(err("${").contains("missing '}'"));
        assert!(err("${A").contains("missing '}'"));
        assert!(err("${A:-x").contains("missing '}'"));
        assert!(err("${}").contains("bad substitution"));
        assert!(err("${:a}").contains("bad substitution"));
        assert!(err("${{a}").contains("bad substitution"));
        assert!(err("${A!}").contains("unsupported modifier (!)"));
        assert!(err("${A:x}").contains("unsupported modifier (:x)"));
        assert!(err("'abc").contains("single-quote"));
        assert!(err("\"abc").contains("double-quote"));
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(w("'$A'"), "$A");
        assert_eq!(w("\"$A\""), "hello");
        assert_eq!(w("\"a'b\""), "a'b");
        assert_eq!(w("'a\"b'"), "a\"b");
        assert_eq!(w(r"\$A"), "$A");
        assert_eq!(w(r"\\$A"), r"\hello");
        assert_eq!(w(r"a\ b"), "a b");
        assert_eq!(w(r"\'x"), "'x");
        assert_eq!(w(r#""a\"b""#), "a\"b");
        assert_eq!(w(r#""a\$A""#), "a$A");
        assert_eq!(w(r#""a\\b""#), r"a\b");
        assert_eq!(w(r#""a\nb""#), r"a\nb");
        assert_eq!(w(r"'a\nb'"), r"a\nb");
        assert_eq!(w(r"abc\"), "abc");
        assert_eq!(w("\"\""), "");
        assert_eq!(w("a\"b c\"d"), "ab cd");
    }

    #[test]
    fn backtick_escape() {
        let e = env();
        assert_eq!(expand_word("`$A", &e, '`').unwrap(), "$A");
        assert_eq!(expand_word(r"C:\dir\$A", &e, '`').unwrap(), r"C:\dir\hello");
        assert_eq!(expand_word("\"a`\"b\"", &e, '`').unwrap(), "a\"b");
        assert_eq!(expand_word(r#""a\b""#, &e, '`').unwrap(), r"a\b");
    }

    #[test]
    fn word_splitting() {
        let e = env();
        let ws = |s: &str| expand_words(s, &e, '\\').unwrap();
        assert_eq!(ws("a b  c"), vec!["a", "b", "c"]);
        assert_eq!(ws("$S"), vec!["a", "b", "c"]);
        assert_eq!(ws("\"$S\""), vec!["a b  c"]);
        assert_eq!(ws("x$S"), vec!["xa", "b", "c"]);
        assert_eq!(ws(r"a\ b c"), vec!["a b", "c"]);
        assert_eq!(ws("'a b' c"), vec!["a b", "c"]);
        assert_eq!(ws("80/tcp ${U:-443}"), vec!["80/tcp", "443"]);
        assert!(ws("").is_empty());
        assert!(ws("  ").is_empty());
        assert!(ws("$U").is_empty());
    }

    #[test]
    fn heredoc_expansion() {
        let e = env();
        let h = |s: &str| expand_heredoc(s, &e, '\\').unwrap();
        assert_eq!(h("echo \"$A\" '$A'\n"), "echo \"hello\" 'hello'\n");
        assert_eq!(h("cost \\$5 ${U:-d}\n"), "cost $5 d\n");
        assert_eq!(h("printf 'a\\nb'\n"), "printf 'a\\nb'\n");
        assert_eq!(h("it's\n"), "it's\n");
        assert!(expand_heredoc("${A", &e, '\\').is_err());
    }

    #[test]
    fn referenced() {
        assert_eq!(
            referenced_vars("$A ${B:-$C} ${A}", '\\'),
            vec!["A", "B", "C"]
        );
        assert_eq!(
            referenced_vars(r"\$A '$B' ${D:?x} ${E#$F}", '\\'),
            vec!["D", "E", "F"]
        );
        assert_eq!(referenced_vars("\"$G\"", '\\'), vec!["G"]);
        assert!(referenced_vars("plain", '\\').is_empty());
        assert_eq!(referenced_vars("$A ${", '\\'), vec!["A"]);
    }

    #[test]
    fn vars_impls() {
        let mut b = BTreeMap::new();
        b.insert("K".to_string(), "v".to_string());
        assert_eq!(expand_word("$K", &b, '\\').unwrap(), "v");
        let f = |n: &str| (n == "Z").then(|| "zz".to_string());
        assert_eq!(expand_word("$Z$Y", &f, '\\').unwrap(), "zz");
    }

    #[test]
    fn glob_matching() {
        let g = Glob::compile("a*b?c[x-z]", '\\');
        assert!(g.matches(&"aXXbYcy".chars().collect::<Vec<_>>()));
        assert!(!g.matches(&"aXXbYcw".chars().collect::<Vec<_>>()));
        let g = Glob::compile("[", '\\');
        assert!(g.matches(&['[']));
        let g = Glob::compile("[]]", '\\');
        assert!(g.matches(&[']']));
    }
}
