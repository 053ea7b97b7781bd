//! The Dockerfile parser (BuildKit dialect): parser directives, comments, line continuations
//! (with comment and blank lines inside them), flags, JSON/shell forms and heredocs.
//!
//! Words are kept raw (quotes and escapes as written); see [`super::expand`] for expansion.

use std::fmt;

use super::ast::{
    Args, CommandLine, Dockerfile, Flag, Healthcheck, Heredoc, Instruction, Keyword, Span,
};
use super::expand;

/// A syntax error, located at the line of the offending instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line of the instruction (its keyword); 0 when the error concerns the whole file.
    pub line: usize,
    /// What is wrong, BuildKit wording where BuildKit has one.
    pub message: String,
}

impl fmt::Display for ParseError {
    /// `line N: message` (just `message` for line 0); callers prefix the file name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ParseError {}

/// The longest physical line a Dockerfile may have, in bytes (BuildKit's limit too).
pub const MAX_LINE: usize = 65_535;
/// The largest Dockerfile read, in bytes (what BuildKit's gateway frontends can receive).
pub const MAX_FILE: usize = 16 << 20;

/// Parses a whole Dockerfile. `source` may be arbitrary bytes: invalid UTF-8 is an error located
/// at the line of the first bad byte. A leading UTF-8 byte-order mark is ignored. A file over
/// [`MAX_FILE`] or a line over [`MAX_LINE`] bytes is an error.
pub fn parse(source: &[u8]) -> Result<Dockerfile, ParseError> {
    if source.len() > MAX_FILE {
        return Err(ParseError {
            line: 0,
            message: format!("the Dockerfile is larger than {} MiB", MAX_FILE >> 20),
        });
    }
    let text = std::str::from_utf8(source).map_err(|e| {
        let valid = source.get(..e.valid_up_to()).unwrap_or_default();
        ParseError {
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            message: "invalid UTF-8 in Dockerfile".into(),
        }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if text.ends_with('\n') {
        lines.pop(); // the final newline ends the last line, it does not start another
    }
    if let Some(i) = lines.iter().position(|l| l.len() > MAX_LINE) {
        return Err(ParseError {
            line: i + 1,
            message: format!("dockerfile line greater than max allowed size of {MAX_LINE}"),
        });
    }

    let mut df = Dockerfile {
        escape: '\\',
        syntax: None,
        check: None,
        instructions: Vec::new(),
    };

    let mut i = 0;
    // Parser directives: only at the very top, each at most once.
    let mut seen: Vec<String> = Vec::new();
    while let Some((name, value)) = lines.get(i).and_then(|l| directive(l)) {
        let err = |message: String| ParseError {
            line: i + 1,
            message,
        };
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            break; // an unknown directive is a comment, and ends the directive block
        }
        if seen.contains(&name) {
            return Err(err(format!("only one {name} parser directive can be used")));
        }
        match name.as_str() {
            "escape" => {
                df.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(err(format!(
                            "invalid escape token {value:?} does not match ` or \\"
                        )))
                    }
                }
            }
            "syntax" => df.syntax = Some(value),
            _ => df.check = Some(value),
        }
        seen.push(name);
        i += 1;
    }

    let escape = df.escape;
    while i < lines.len() {
        let first = lines[i].trim_start();
        i += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let start = i;
        let (head, mut more) = trim_continuation(first, escape);
        let mut line = head.to_string();
        while more && i < lines.len() {
            let next = lines[i];
            i += 1;
            let t = next.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue; // comment and blank lines inside a continuation are skipped
            }
            let (part, m) = trim_continuation(next, escape);
            line.push_str(part);
            more = m;
        }
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| ParseError {
            line: start,
            message,
        };
        let (mut inst, pending) = parse_line(&line, escape).map_err(err)?;
        let mut bodies = Vec::with_capacity(pending.len());
        for (name, chomp) in pending {
            let mut content = String::new();
            let mut terminated = false;
            while i < lines.len() {
                let l = lines[i];
                i += 1;
                let candidate = if chomp { l.trim_start_matches('\t') } else { l };
                if candidate == name {
                    terminated = true;
                    break;
                }
                content.push_str(if chomp { candidate } else { l });
                content.push('\n');
            }
            if !terminated {
                return Err(err(format!("unterminated heredoc {name}")));
            }
            bodies.push(content);
        }
        if let Some(heredocs) = heredocs_mut(&mut inst) {
            for (h, body) in heredocs.iter_mut().zip(bodies) {
                h.content = body;
            }
        }
        let span = Span { start, end: i };
        set_span(&mut inst, span);
        df.instructions.push(inst);
    }
    if df.instructions.is_empty() {
        return Err(ParseError {
            line: 0,
            message: "file with no instructions".into(),
        });
    }
    Ok(df)
}

fn set_span(inst: &mut Instruction, span: Span) {
    inst.span = span;
    if let Args::Onbuild(inner) = &mut inst.args {
        set_span(inner, span);
    }
}

fn heredocs_mut(inst: &mut Instruction) -> Option<&mut Vec<Heredoc>> {
    match &mut inst.args {
        Args::Command { heredocs, .. } | Args::Copy { heredocs, .. } => Some(heredocs),
        Args::Onbuild(inner) => heredocs_mut(inner),
        _ => None,
    }
}

/// `# name = value` at the top of the file: lowercased name and trimmed value.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, after) = rest.split_at(name_len);
    let value = after.trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.to_string()))
}

/// Removes a trailing escape character (followed only by spaces/tabs): `(text, continues)`.
/// As in BuildKit, an escape preceded by another escape (`foo \\`) does not continue the line.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some(rest) if !rest.ends_with(escape) => (rest, true),
        _ => (line, false),
    }
}

/// A heredoc found on an instruction line whose body is still to be read: (delimiter, chomp).
type Pending = Vec<(String, bool)>;

fn keyword(word: &str) -> Option<Keyword> {
    Some(match word.to_ascii_lowercase().as_str() {
        "from" => Keyword::From,
        "run" => Keyword::Run,
        "cmd" => Keyword::Cmd,
        "label" => Keyword::Label,
        "maintainer" => Keyword::Maintainer,
        "expose" => Keyword::Expose,
        "env" => Keyword::Env,
        "add" => Keyword::Add,
        "copy" => Keyword::Copy,
        "entrypoint" => Keyword::Entrypoint,
        "volume" => Keyword::Volume,
        "user" => Keyword::User,
        "workdir" => Keyword::Workdir,
        "arg" => Keyword::Arg,
        "onbuild" => Keyword::Onbuild,
        "stopsignal" => Keyword::Stopsignal,
        "healthcheck" => Keyword::Healthcheck,
        "shell" => Keyword::Shell,
        _ => return None,
    })
}

/// Splits off the first whitespace-delimited word of an already trimmed string.
fn first_word(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Parses one logical (continuation-joined) instruction line.
fn parse_line(line: &str, escape: char) -> Result<(Instruction, Pending), String> {
    let original = line.trim();
    let (kw_word, rest) = first_word(original);
    let kw = keyword(kw_word)
        .ok_or_else(|| format!("unknown instruction: {}", kw_word.to_uppercase()))?;
    let (flags, args) = extract_flags(rest);
    let name = kw_word.to_uppercase();
    let at_least_one = || format!("{name} requires at least one argument");
    let exactly_one = || format!("{name} requires exactly one argument");
    let mut pending = Pending::new();

    let args = match kw {
        Keyword::From => {
            let words = split_words(args, escape);
            match words.as_slice() {
                [image] => Args::From {
                    image: image.clone(),
                    alias: None,
                },
                [image, as_, alias] if as_.eq_ignore_ascii_case("as") => Args::From {
                    image: image.clone(),
                    alias: Some(alias.clone()),
                },
                [_, _, _] => {
                    return Err(
                        "when using FROM with three arguments, the second argument must be \"AS\""
                            .into(),
                    )
                }
                _ => return Err("FROM requires either one or three arguments".into()),
            }
        }
        Keyword::Run | Keyword::Cmd | Keyword::Entrypoint | Keyword::Shell => {
            if args.is_empty() {
                return Err(at_least_one());
            }
            let mut heredocs = Vec::new();
            let command = match json_array(args)? {
                Some(argv) => {
                    if kw == Keyword::Shell && argv.is_empty() {
                        return Err(at_least_one());
                    }
                    CommandLine::Exec(argv)
                }
                None if kw == Keyword::Shell => {
                    return Err("SHELL requires the arguments to be in JSON form".into())
                }
                None => {
                    if kw == Keyword::Run {
                        heredocs = find_heredocs(&split_words(args, escape), escape, &mut pending);
                    }
                    CommandLine::Shell(args.to_string())
                }
            };
            Args::Command { command, heredocs }
        }
        Keyword::Env | Keyword::Label => Args::KeyValues(key_values(args, &name, escape)?),
        Keyword::Arg => {
            let words = split_words(args, escape);
            if words.is_empty() {
                return Err(at_least_one());
            }
            let mut out = Vec::new();
            for w in words {
                let (n, v) = match w.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (w, None),
                };
                if n.is_empty() {
                    return Err("ARG names can not be blank".into());
                }
                out.push((n, v));
            }
            Args::Arg(out)
        }
        Keyword::Copy | Keyword::Add => {
            let json = json_array(args)?;
            let is_json = json.is_some();
            let mut words = json.unwrap_or_else(|| split_words(args, escape));
            if words.len() < 2 {
                return Err(if words.is_empty() {
                    format!("{name} requires at least two arguments")
                } else {
                    format!(
                        "{name} requires at least two arguments, but only one was provided. \
                         Destination could not be determined."
                    )
                });
            }
            let dest = words.pop().unwrap_or_default();
            let mut heredocs = Vec::new();
            if !is_json {
                if heredoc_marker(&dest, escape).is_some() {
                    return Err(format!("{name} cannot accept a heredoc as a destination"));
                }
                heredocs = find_heredocs(&words, escape, &mut pending);
            }
            Args::Copy {
                sources: words,
                dest,
                heredocs,
            }
        }
        Keyword::Expose => {
            let words = split_words(args, escape);
            if words.is_empty() {
                return Err(at_least_one());
            }
            Args::Words(words)
        }
        Keyword::Volume => {
            let words = match json_array(args)? {
                Some(words) => words,
                None => split_words(args, escape),
            };
            if words.is_empty() {
                return Err(at_least_one());
            }
            Args::Words(words)
        }
        Keyword::Maintainer | Keyword::User | Keyword::Workdir | Keyword::Stopsignal => {
            if args.is_empty() {
                return Err(exactly_one());
            }
            Args::Text(args.to_string())
        }
        Keyword::Healthcheck => {
            if args.is_empty() {
                return Err(at_least_one());
            }
            let (typ, cmd) = first_word(args);
            match typ.to_ascii_uppercase().as_str() {
                "NONE" => {
                    if !cmd.is_empty() {
                        return Err("HEALTHCHECK NONE takes no arguments".into());
                    }
                    Args::Healthcheck(Healthcheck::None)
                }
                "CMD" => {
                    if cmd.is_empty() {
                        return Err("Missing command after HEALTHCHECK CMD".into());
                    }
                    Args::Healthcheck(Healthcheck::Cmd(match json_array(cmd)? {
                        Some(argv) => CommandLine::Exec(argv),
                        None => CommandLine::Shell(cmd.to_string()),
                    }))
                }
                _ => return Err(format!("Unknown type {typ:?} in HEALTHCHECK (try CMD)")),
            }
        }
        Keyword::Onbuild => {
            if args.is_empty() {
                return Err(at_least_one());
            }
            let trigger = first_word(args).0.to_uppercase();
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into())
                }
                "FROM" | "MAINTAINER" => {
                    return Err(format!("{trigger} isn't allowed as an ONBUILD trigger"))
                }
                _ => {}
            }
            let (inner, inner_pending) = parse_line(args, escape)?;
            pending = inner_pending;
            Args::Onbuild(Box::new(inner))
        }
    };
    Ok((
        Instruction {
            span: Span::default(),
            keyword: kw,
            flags,
            args,
            original: original.to_string(),
        },
        pending,
    ))
}

/// Leading `--name[=value]` words (quotes removed, BuildKit style); stops at the first word not
/// starting with `--`, or after a lone `--`. Returns the flags and the trimmed rest.
fn extract_flags(s: &str) -> (Vec<Flag>, &str) {
    let mut flags = Vec::new();
    let mut rest = s.trim_start();
    while rest.starts_with("--") {
        let chars: Vec<(usize, char)> = rest.char_indices().collect();
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut k = 0;
        let mut end = rest.len();
        while k < chars.len() {
            let (idx, c) = chars[k];
            match quote {
                None if c.is_whitespace() => {
                    end = idx;
                    break;
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    if let Some(&(_, n)) = chars.get(k + 1) {
                        word.push(n);
                        k += 1;
                    }
                }
                _ => word.push(c),
            }
            k += 1;
        }
        rest = rest.get(end..).unwrap_or("").trim_start();
        if word == "--" {
            break;
        }
        let body = word.get(2..).unwrap_or("");
        flags.push(match body.split_once('=') {
            Some((n, v)) => Flag {
                name: n.to_string(),
                value: Some(v.to_string()),
            },
            None => Flag {
                name: body.to_string(),
                value: None,
            },
        });
    }
    (flags, rest)
}

/// Splits on unquoted whitespace, keeping quotes and escapes in the words (BuildKit
/// `parseWords`): the escape char protects the next char, `'` quotes protect everything.
pub(crate) fn split_words(s: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match quote {
            None => {
                if c.is_whitespace() {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                    continue;
                }
                in_word = true;
                if c == '\'' || c == '"' {
                    quote = Some(c);
                } else if c == escape {
                    match it.next() {
                        Some(n) => {
                            word.push(c);
                            word.push(n);
                        }
                        None => continue, // a trailing escape is dropped
                    }
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                } else if c == escape && q != '\'' {
                    if let Some(n) = it.next() {
                        word.push(c);
                        word.push(n);
                    }
                    continue;
                }
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `key=value ...` pairs, or the legacy `KEY name value` form (one pair, value = rest).
fn key_values(args: &str, name: &str, escape: char) -> Result<Vec<(String, String)>, String> {
    let words = split_words(args, escape);
    let Some(first) = words.first() else {
        return Err(format!("{name} requires at least one argument"));
    };
    if !first.contains('=') {
        let (k, v) = first_word(args);
        if v.is_empty() {
            return Err(format!("{name} must have two arguments"));
        }
        return Ok(vec![(k.to_string(), v.to_string())]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            ));
        };
        if k.is_empty() {
            return Err(format!("{name} names can not be blank"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// `Some(argv)` when `s` is a JSON array of strings, `None` when it is not JSON (shell form),
/// an error when it is a JSON array with non-string elements.
fn json_array(s: &str) -> Result<Option<Vec<String>>, String> {
    if !s.starts_with('[') {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(
                    "dockerfile: when using JSON array syntax, arrays must be comprised of strings only"
                        .to_string(),
                ),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Ok(None),
    }
}

/// If `word` is a heredoc marker (`<<EOF`, `<<-EOF`, `3<<"EOF"`): (name, chomp, expand).
fn heredoc_marker(word: &str, escape: char) -> Option<(String, bool, bool)> {
    let after_fd = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = after_fd.strip_prefix("<<")?;
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let none = |_: &str| None;
    let mut words = expand::expand_words(rest, &none, escape).ok()?;
    if words.len() != 1 {
        return None;
    }
    let name = words.pop()?;
    // Quoting any part of the delimiter disables expansion (BuildKit compares quote counts).
    let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let expand = quotes(&name) == quotes(rest);
    Some((name, chomp, expand))
}

/// Heredoc markers among `words`, in order; also records their bodies as pending.
fn find_heredocs(words: &[String], escape: char, pending: &mut Pending) -> Vec<Heredoc> {
    words
        .iter()
        .filter_map(|w| heredoc_marker(w, escape))
        .map(|(name, chomp, expand)| {
            pending.push((name.clone(), chomp));
            Heredoc {
                name,
                content: String::new(),
                expand,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Dockerfile {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn one(s: &str) -> Instruction {
        let df = p(s);
        df.instructions.last().cloned().unwrap()
    }

    fn e(s: &str) -> ParseError {
        parse(s.as_bytes()).unwrap_err()
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn shell(s: &str) -> CommandLine {
        CommandLine::Shell(s.into())
    }

    // ---- directives ----

    #[test]
    fn directives() {
        let df = p("# syntax=docker/dockerfile:1\n# ESCAPE = `\n#check=skip=all\nFROM a\n");
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.escape, '`');
        assert_eq!(df.check.as_deref(), Some("skip=all"));
        assert_eq!(df.instructions[0].span, Span { start: 4, end: 4 });
    }

    #[test]
    fn directive_only_at_top() {
        let df = p("FROM a\n# escape=`\n");
        assert_eq!(df.escape, '\\');
        let df = p("# hello\n# escape=`\nFROM a\n");
        assert_eq!(df.escape, '\\');
        let df = p("\n# escape=`\nFROM a\n");
        assert_eq!(df.escape, '\\');
        // An unknown directive is a comment and ends the directive block.
        let df = p("# foo=bar\n# escape=`\nFROM a\n");
        assert_eq!(df.escape, '\\');
        assert_eq!(df.syntax, None);
    }

    #[test]
    fn directive_errors() {
        let err = e("# escape=`\n# escape=\\\nFROM a\n");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("only one escape parser directive"));
        let err = e("# syntax=a\n# Syntax=b\nFROM a\n");
        assert_eq!(err.line, 2);
        let err = e("# escape=x\nFROM a\n");
        assert_eq!(err.line, 1);
        assert!(err.message.contains("invalid escape token"));
    }

    #[test]
    fn escape_directive_changes_continuation() {
        let df = p("# escape=`\nFROM a\nRUN dir C:\\ `\n  && echo hi\n");
        let run = &df.instructions[1];
        assert_eq!(
            run.args,
            Args::Command {
                command: shell("dir C:\\   && echo hi"),
                heredocs: vec![]
            }
        );
        assert_eq!(run.span, Span { start: 3, end: 4 });
        // With backtick escape a trailing backslash is literal.
        let df = p("# escape=`\nFROM a\nWORKDIR C:\\\nUSER x\n");
        assert_eq!(df.instructions[1].args, Args::Text("C:\\".into()));
        assert_eq!(df.instructions.len(), 3);
    }

    // ---- lines, comments, continuations ----

    #[test]
    fn comments_blank_lines_and_continuations() {
        let src = "\n  # comment\nFROM a\n\nRUN echo a \\\n# inside\n\n   \n  && echo b \\  \n  && echo c\nUSER me\n";
        let df = p(src);
        assert_eq!(df.instructions.len(), 3);
        let run = &df.instructions[1];
        assert_eq!(run.span, Span { start: 5, end: 10 });
        assert_eq!(
            run.args,
            Args::Command {
                command: shell("echo a   && echo b   && echo c"),
                heredocs: vec![]
            }
        );
        assert_eq!(run.original, "RUN echo a   && echo b   && echo c");
        assert_eq!(df.instructions[2].span, Span { start: 11, end: 11 });
    }

    #[test]
    fn crlf_bom_and_trailing_continuation() {
        let df = p("\u{feff}FROM a\r\nRUN a \\\r\n b\r\n");
        assert_eq!(
            df.instructions[1].args,
            Args::Command {
                command: shell("a  b"),
                heredocs: vec![]
            }
        );
        let df = p("FROM a\nRUN x \\");
        assert_eq!(df.instructions[1].span, Span { start: 2, end: 2 });
        let df = p("FROM a\nRUN x \\\n");
        assert_eq!(df.instructions[1].span.end, 2);
        // An escaped escape at the end does not continue the line.
        let df = p("FROM a\nRUN echo \\\\\nUSER x\n");
        assert_eq!(df.instructions.len(), 3);
        assert_eq!(
            df.instructions[1].args,
            Args::Command {
                command: shell("echo \\\\"),
                heredocs: vec![]
            }
        );
        // A lone escape on a line continues.
        let df = p("FROM a\nRUN a \\\n \\\n b\n");
        assert_eq!(df.instructions[1].span, Span { start: 2, end: 4 });
        let df = p("FROM a\nRUN x \\\n\n# c\n");
        assert_eq!(df.instructions[1].span.end, 4);
        // A heredoc marker on a continuation line; the body starts after the joined line.
        let df = p("FROM a\nRUN cat \\\n  <<EOF\nbody\nEOF\n");
        let run = &df.instructions[1];
        assert_eq!(run.span, Span { start: 2, end: 5 });
        let Args::Command { command, heredocs } = &run.args else {
            panic!()
        };
        assert_eq!(command, &shell("cat   <<EOF"));
        assert_eq!(heredocs[0].content, "body\n");
    }

    #[test]
    fn hash_inside_instruction_is_not_comment() {
        let i = one("FROM a\nRUN echo # not a comment\n");
        assert_eq!(
            i.args,
            Args::Command {
                command: shell("echo # not a comment"),
                heredocs: vec![]
            }
        );
    }

    #[test]
    fn keywords_case_insensitive_and_unknown() {
        let df = p("from a AS b\nrUn x\n");
        assert_eq!(df.instructions[1].keyword, Keyword::Run);
        let err = e("FROM a\n\nFOO bar\n");
        assert_eq!(
            err,
            ParseError {
                line: 3,
                message: "unknown instruction: FOO".into()
            }
        );
        assert_eq!(err.to_string(), "line 3: unknown instruction: FOO");
    }

    #[test]
    fn whole_file_errors() {
        assert_eq!(e("").line, 0);
        assert_eq!(e("").to_string(), "file with no instructions");
        let boxed: Box<dyn std::error::Error> = Box::new(e("FOO"));
        assert_eq!(boxed.to_string(), "line 1: unknown instruction: FOO");
        assert_eq!(
            e("# just a comment\n\n").message,
            "file with no instructions"
        );
        let err = parse(b"FROM a\nRUN \xff\xfe\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.to_string().starts_with("line 2: "));
    }

    // ---- flags ----

    #[test]
    fn flags() {
        let i = one("FROM a\nRUN --mount=type=cache,target=/x --network=none --link echo --no\n");
        assert_eq!(
            i.flags,
            vec![
                Flag {
                    name: "mount".into(),
                    value: Some("type=cache,target=/x".into())
                },
                Flag {
                    name: "network".into(),
                    value: Some("none".into())
                },
                Flag {
                    name: "link".into(),
                    value: None
                },
            ]
        );
        assert_eq!(
            i.args,
            Args::Command {
                command: shell("echo --no"),
                heredocs: vec![]
            }
        );
        assert_eq!(
            i.original,
            "RUN --mount=type=cache,target=/x --network=none --link echo --no"
        );
        let i = one("FROM a\nCOPY --chown=\"1:1\" --from=b a b\n");
        assert_eq!(i.flags[0].value.as_deref(), Some("1:1"));
        assert_eq!(i.flags[1].value.as_deref(), Some("b"));
        let i = one("FROM a\nRUN -- --not-a-flag\n");
        assert!(i.flags.is_empty());
        assert_eq!(
            i.args,
            Args::Command {
                command: shell("--not-a-flag"),
                heredocs: vec![]
            }
        );
        let i = one("FROM --platform=$BUILDPLATFORM img AS b\n");
        assert_eq!(i.flags[0].value.as_deref(), Some("$BUILDPLATFORM"));
        let err = e("FROM a\nRUN --mount=x\n");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("RUN requires at least one argument"));
    }

    // ---- FROM ----

    #[test]
    fn from_forms() {
        assert_eq!(
            one("FROM img").args,
            Args::From {
                image: "img".into(),
                alias: None
            }
        );
        assert_eq!(
            one("FROM img:1 as Build").args,
            Args::From {
                image: "img:1".into(),
                alias: Some("Build".into())
            }
        );
        assert_eq!(
            e("FROM").message,
            "FROM requires either one or three arguments"
        );
        assert_eq!(e("FROM a b").line, 1);
        assert!(e("FROM a b\n").message.contains("one or three"));
        assert!(e("FROM a to b").message.contains("\"AS\""));
        assert_eq!(e("FROM a\nFROM a AS b c\n").line, 2);
    }

    // ---- RUN / CMD / ENTRYPOINT / SHELL ----

    #[test]
    fn exec_and_shell_forms() {
        let i = one("FROM a\nCMD [\"echo\", \"hi there\"]\n");
        assert_eq!(
            i.args,
            Args::Command {
                command: CommandLine::Exec(strs(&["echo", "hi there"])),
                heredocs: vec![]
            }
        );
        let i = one("FROM a\nENTRYPOINT []\n");
        assert_eq!(
            i.args,
            Args::Command {
                command: CommandLine::Exec(vec![]),
                heredocs: vec![]
            }
        );
        // Malformed JSON falls back to shell form.
        let i = one("FROM a\nRUN [\"a\", \n");
        assert_eq!(
            i.args,
            Args::Command {
                command: shell("[\"a\","),
                heredocs: vec![]
            }
        );
        let i = one("FROM a\nRUN [ -f x ] && echo\n");
        assert_eq!(
            i.args,
            Args::Command {
                command: shell("[ -f x ] && echo"),
                heredocs: vec![]
            }
        );
        let err = e("FROM a\nCMD [\"a\", 1]\n");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("comprised of strings only"));
        // JSON form spanning continuation lines.
        let i = one("FROM a\nRUN [\"a\", \\\n  \"b\"]\n");
        assert_eq!(
            i.args,
            Args::Command {
                command: CommandLine::Exec(strs(&["a", "b"])),
                heredocs: vec![]
            }
        );
        for kw in ["RUN", "CMD", "ENTRYPOINT", "SHELL"] {
            let err = e(&format!("FROM a\n{kw}\n"));
            assert_eq!(err.line, 2);
            assert_eq!(err.message, format!("{kw} requires at least one argument"));
        }
    }

    #[test]
    fn shell_instruction() {
        let i = one("FROM a\nSHELL [\"powershell\", \"-Command\"]\n");
        assert_eq!(i.keyword, Keyword::Shell);
        assert_eq!(
            i.args,
            Args::Command {
                command: CommandLine::Exec(strs(&["powershell", "-Command"])),
                heredocs: vec![]
            }
        );
        let err = e("FROM a\nSHELL /bin/sh -c\n");
        assert_eq!(err.line, 2);
        assert_eq!(
            err.message,
            "SHELL requires the arguments to be in JSON form"
        );
        assert!(e("FROM a\nSHELL []\n").message.contains("at least one"));
    }

    // ---- heredocs ----

    #[test]
    fn run_heredoc() {
        let i = one("FROM a\nRUN <<EOF\necho $HOME\n  indented\nEOF\n");
        assert_eq!(
            i.args,
            Args::Command {
                command: shell("<<EOF"),
                heredocs: vec![Heredoc {
                    name: "EOF".into(),
                    content: "echo $HOME\n  indented\n".into(),
                    expand: true
                }]
            }
        );
        assert_eq!(i.span, Span { start: 2, end: 5 });
        assert_eq!(i.original, "RUN <<EOF");
        let i = one("FROM a\nRUN --network=none python3 <<'PY'\nprint(1)\nPY\n");
        assert_eq!(
            i.args,
            Args::Command {
                command: shell("python3 <<'PY'"),
                heredocs: vec![Heredoc {
                    name: "PY".into(),
                    content: "print(1)\n".into(),
                    expand: false
                }]
            }
        );
    }

    #[test]
    fn heredoc_forms() {
        // <<- strips leading tabs from body lines and the terminator.
        let i = one("FROM a\nRUN <<-EOT\n\t\techo a\n\tb\n  c\n\tEOT\nUSER x\n");
        let Args::Command { heredocs, .. } =
            &p("FROM a\nRUN <<-EOT\n\t\techo a\n\tb\n  c\n\tEOT\n").instructions[1].args
        else {
            panic!()
        };
        assert_eq!(heredocs[0].content, "echo a\nb\n  c\n");
        assert_eq!(i.keyword, Keyword::User);
        // Without '-' a tab-indented delimiter does not terminate.
        assert!(e("FROM a\nRUN <<EOT\nx\n\tEOT\n")
            .message
            .contains("unterminated heredoc"));
        // Quoted delimiters disable expansion.
        let i = one("FROM a\nRUN <<\"X\"\n$a\nX\n");
        let Args::Command { heredocs, .. } = i.args else {
            panic!()
        };
        assert_eq!(
            heredocs[0],
            Heredoc {
                name: "X".into(),
                content: "$a\n".into(),
                expand: false
            }
        );
        // Several heredocs on one line, read in order.
        let i = one("FROM a\nRUN <<A cat && 3<<-B cat\na1\nA\n\tb1\nB\nUSER u\n");
        assert_eq!(i.keyword, Keyword::User);
        assert_eq!(i.span, Span { start: 7, end: 7 });
        let df = p("FROM a\nRUN <<A cat && 3<<-B cat\na1\nA\n\tb1\nB\n");
        let run = &df.instructions[1];
        assert_eq!(run.span, Span { start: 2, end: 6 });
        let Args::Command { command, heredocs } = &run.args else {
            panic!()
        };
        assert_eq!(command, &shell("<<A cat && 3<<-B cat"));
        assert_eq!(heredocs.len(), 2);
        assert_eq!(heredocs[0].content, "a1\n");
        assert_eq!(
            (heredocs[1].name.as_str(), heredocs[1].content.as_str()),
            ("B", "b1\n")
        );
        // Partly quoted delimiters and escapes.
        let i = one("FROM a\nRUN <<E'O'F\nx\nEOF\n");
        let Args::Command { heredocs, .. } = i.args else {
            panic!()
        };
        assert_eq!(
            (heredocs[0].name.as_str(), heredocs[0].expand),
            ("EOF", false)
        );
        let i = one("FROM a\nCOPY <<\"my file\" /x\nx\nmy file\n");
        let Args::Copy { heredocs, .. } = i.args else {
            panic!()
        };
        assert_eq!(
            (heredocs[0].name.as_str(), heredocs[0].expand),
            ("my file", false)
        );
        // Empty body.
        let i = one("FROM a\nRUN <<E\nE\n");
        let Args::Command { heredocs, .. } = i.args else {
            panic!()
        };
        assert_eq!(heredocs[0].content, "");
    }

    #[test]
    fn not_heredocs() {
        for src in [
            "FROM a\nRUN echo \"<<EOF\"\n",
            "FROM a\nRUN echo '<<EOF'\n",
            "FROM a\nRUN echo a<<EOF\n",
            "FROM a\nRUN echo <<\n",
            "FROM a\nRUN [\"sh\", \"<<EOF\"]\n",
            "FROM a\nCMD cat <<EOF\n",
        ] {
            let i = one(src);
            let Args::Command { heredocs, .. } = i.args else {
                panic!()
            };
            assert!(heredocs.is_empty(), "{src}");
        }
    }

    #[test]
    fn heredoc_unterminated() {
        let err = e("FROM a\nRUN true\nRUN <<EOF\nline\nEOF \n");
        assert_eq!(err.line, 3);
        assert_eq!(err.message, "unterminated heredoc EOF");
        let err = e("FROM a\nCOPY <<a <<b /d/\nx\na\ny\n");
        assert_eq!(
            (err.line, err.message.as_str()),
            (2, "unterminated heredoc b")
        );
    }

    #[test]
    fn copy_heredocs() {
        let i = one("FROM a\nCOPY --chmod=755 <<a.txt <<\"b.sh\" /dest/\nhello\na.txt\n$x\nb.sh\n");
        assert_eq!(i.span, Span { start: 2, end: 6 });
        assert_eq!(
            i.args,
            Args::Copy {
                sources: strs(&["<<a.txt", "<<\"b.sh\""]),
                dest: "/dest/".into(),
                heredocs: vec![
                    Heredoc {
                        name: "a.txt".into(),
                        content: "hello\n".into(),
                        expand: true
                    },
                    Heredoc {
                        name: "b.sh".into(),
                        content: "$x\n".into(),
                        expand: false
                    },
                ]
            }
        );
        assert_eq!(i.original, "COPY --chmod=755 <<a.txt <<\"b.sh\" /dest/");
        let err = e("FROM a\nCOPY a <<EOF\nx\nEOF\n");
        assert_eq!(err.line, 2);
        assert!(err
            .message
            .contains("cannot accept a heredoc as a destination"));
        let i = one("FROM a\nADD <<-EOF /x\n\tbody\n\tEOF\n");
        let Args::Copy { heredocs, .. } = i.args else {
            panic!()
        };
        assert_eq!(heredocs[0].content, "body\n");
    }

    // ---- COPY / ADD ----

    #[test]
    fn copy_forms() {
        let i = one("FROM a\nCOPY --from=b --chown=1:1 a \"b c\" /d/\n");
        assert_eq!(
            i.args,
            Args::Copy {
                sources: strs(&["a", "\"b c\""]),
                dest: "/d/".into(),
                heredocs: vec![]
            }
        );
        assert_eq!(i.flags.len(), 2);
        let i = one("FROM a\nADD [\"a b\", \"/c d/\"]\n");
        assert_eq!(
            i.args,
            Args::Copy {
                sources: strs(&["a b"]),
                dest: "/c d/".into(),
                heredocs: vec![]
            }
        );
        assert_eq!(i.keyword, Keyword::Add);
        let err = e("FROM a\nCOPY a\n");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("at least two arguments, but only one"));
        assert!(e("FROM a\nADD\n")
            .message
            .contains("ADD requires at least two arguments"));
        assert!(e("FROM a\nCOPY [\"a\"]\n").message.contains("at least two"));
    }

    // ---- ENV / LABEL / ARG ----

    #[test]
    fn env_and_label() {
        let i = one("FROM a\nENV A=1 B=\"two words\" C=x\\ y D=\n");
        assert_eq!(
            i.args,
            Args::KeyValues(vec![
                ("A".into(), "1".into()),
                ("B".into(), "\"two words\"".into()),
                ("C".into(), "x\\ y".into()),
                ("D".into(), "".into()),
            ])
        );
        let i = one("FROM a\nENV PATH /usr/bin:$PATH  and more\n");
        assert_eq!(
            i.args,
            Args::KeyValues(vec![("PATH".into(), "/usr/bin:$PATH  and more".into())])
        );
        let i =
            one("FROM a\nLABEL \"com.example.vendor\"=\"ACME Inc\" version=1.0 \\\n  desc='a b'\n");
        assert_eq!(
            i.args,
            Args::KeyValues(vec![
                ("\"com.example.vendor\"".into(), "\"ACME Inc\"".into()),
                ("version".into(), "1.0".into()),
                ("desc".into(), "'a b'".into()),
            ])
        );
        let err = e("FROM a\nENV\n");
        assert_eq!(
            (err.line, err.message.as_str()),
            (2, "ENV requires at least one argument")
        );
        assert_eq!(e("FROM a\nENV A\n").message, "ENV must have two arguments");
        assert_eq!(
            e("FROM a\nLABEL a\n").message,
            "LABEL must have two arguments"
        );
        assert!(e("FROM a\nLABEL a=b c\n")
            .message
            .contains("can't find = in \"c\""));
        assert!(e("FROM a\nENV =x\n")
            .message
            .contains("names can not be blank"));
        assert!(e("FROM a\nLABEL\n")
            .message
            .contains("LABEL requires at least one argument"));
    }

    #[test]
    fn arg() {
        let i = one("ARG A B=2 C=\"x y\"\n");
        assert_eq!(
            i.args,
            Args::Arg(vec![
                ("A".into(), None),
                ("B".into(), Some("2".into())),
                ("C".into(), Some("\"x y\"".into())),
            ])
        );
        assert_eq!(e("ARG\n").message, "ARG requires at least one argument");
        assert_eq!(e("FROM a\nARG =1\n").line, 2);
        let df = p("ARG V=1\nFROM a:$V\n");
        assert_eq!(df.instructions[0].keyword, Keyword::Arg);
    }

    // ---- simple instructions ----

    #[test]
    fn text_and_word_instructions() {
        assert_eq!(
            one("FROM a\nUSER app:app\n").args,
            Args::Text("app:app".into())
        );
        assert_eq!(
            one("FROM a\nWORKDIR /a b\n").args,
            Args::Text("/a b".into())
        );
        assert_eq!(
            one("FROM a\nSTOPSIGNAL SIGKILL\n").args,
            Args::Text("SIGKILL".into())
        );
        assert_eq!(
            one("FROM a\nMAINTAINER Jo <jo@x>\n").args,
            Args::Text("Jo <jo@x>".into())
        );
        for kw in ["USER", "WORKDIR", "STOPSIGNAL", "MAINTAINER"] {
            let err = e(&format!("FROM a\n{kw}   \n"));
            assert_eq!(err.line, 2);
            assert_eq!(err.message, format!("{kw} requires exactly one argument"));
        }
        assert_eq!(
            one("FROM a\nEXPOSE 80/tcp  ${P}\n").args,
            Args::Words(strs(&["80/tcp", "${P}"]))
        );
        assert!(e("FROM a\nEXPOSE\n")
            .message
            .contains("EXPOSE requires at least one"));
        assert_eq!(
            one("FROM a\nVOLUME /a /b\n").args,
            Args::Words(strs(&["/a", "/b"]))
        );
        assert_eq!(
            one("FROM a\nVOLUME [\"/a b\"]\n").args,
            Args::Words(strs(&["/a b"]))
        );
        assert!(e("FROM a\nVOLUME\n")
            .message
            .contains("VOLUME requires at least one"));
        assert!(e("FROM a\nVOLUME []\n")
            .message
            .contains("VOLUME requires at least one"));
    }

    #[test]
    fn healthcheck() {
        let i = one("FROM a\nHEALTHCHECK --interval=5m --timeout=3s --start-period=1s --start-interval=1s --retries=3 CMD curl -f http://x/ || exit 1\n");
        assert_eq!(i.flags.len(), 5);
        assert_eq!(
            i.flags[4],
            Flag {
                name: "retries".into(),
                value: Some("3".into())
            }
        );
        assert_eq!(
            i.args,
            Args::Healthcheck(Healthcheck::Cmd(shell("curl -f http://x/ || exit 1")))
        );
        assert_eq!(
            one("FROM a\nHEALTHCHECK cmd [\"/bin/check\"]\n").args,
            Args::Healthcheck(Healthcheck::Cmd(CommandLine::Exec(strs(&["/bin/check"]))))
        );
        assert_eq!(
            one("FROM a\nhealthcheck none\n").args,
            Args::Healthcheck(Healthcheck::None)
        );
        assert!(e("FROM a\nHEALTHCHECK NONE x\n")
            .message
            .contains("takes no arguments"));
        assert!(e("FROM a\nHEALTHCHECK CMD\n")
            .message
            .contains("Missing command"));
        assert!(e("FROM a\nHEALTHCHECK\n")
            .message
            .contains("at least one argument"));
        let err = e("FROM a\nHEALTHCHECK FOO x\n");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("Unknown type \"FOO\""));
    }

    #[test]
    fn onbuild() {
        let i = one("FROM a\nONBUILD RUN --mount=type=ssh echo hi\n");
        assert_eq!(i.keyword, Keyword::Onbuild);
        assert_eq!(i.original, "ONBUILD RUN --mount=type=ssh echo hi");
        let Args::Onbuild(inner) = &i.args else {
            panic!()
        };
        assert_eq!(inner.keyword, Keyword::Run);
        assert_eq!(inner.original, "RUN --mount=type=ssh echo hi");
        assert_eq!(inner.flags[0].name, "mount");
        assert_eq!(inner.span, i.span);
        // Heredocs inside an ONBUILD trigger.
        let i = one("FROM a\nONBUILD COPY <<EOF /x\nhi\nEOF\n");
        assert_eq!(i.span, Span { start: 2, end: 4 });
        let Args::Onbuild(inner) = &i.args else {
            panic!()
        };
        let Args::Copy { heredocs, .. } = &inner.args else {
            panic!()
        };
        assert_eq!(heredocs[0].content, "hi\n");
        assert!(e("FROM a\nONBUILD ONBUILD RUN x\n")
            .message
            .contains("Chaining ONBUILD"));
        assert!(e("FROM a\nONBUILD from x\n")
            .message
            .contains("FROM isn't allowed"));
        assert!(e("FROM a\nONBUILD MAINTAINER x\n")
            .message
            .contains("MAINTAINER isn't allowed"));
        assert!(e("FROM a\nONBUILD\n")
            .message
            .contains("at least one argument"));
        let err = e("FROM a\nONBUILD BLAH x\n");
        assert_eq!(
            (err.line, err.message.as_str()),
            (2, "unknown instruction: BLAH")
        );
    }

    #[test]
    fn split_words_rules() {
        assert_eq!(
            split_words("a  'b c' \"d\\\" e\" f\\ g", '\\'),
            strs(&["a", "'b c'", "\"d\\\" e\"", "f\\ g"])
        );
        assert_eq!(split_words("a\\", '\\'), strs(&["a"]));
        assert_eq!(split_words("''", '\\'), strs(&["''"]));
        assert_eq!(split_words("'a\\' b", '\\'), strs(&["'a\\'", "b"]));
    }

    mod props {
        use super::super::*;
        use crate::dockerfile::expand::{
            expand_heredoc, expand_word, expand_words, referenced_vars,
        };
        use proptest::prelude::*;
        use std::collections::HashMap;

        const TOKENS: &[&str] = &[
            "FROM ",
            "RUN ",
            "COPY ",
            "ADD ",
            "ENV ",
            "LABEL ",
            "ARG ",
            "ONBUILD ",
            "HEALTHCHECK ",
            "CMD ",
            "SHELL ",
            "EXPOSE ",
            "VOLUME ",
            "USER ",
            "WORKDIR ",
            "AS ",
            "NONE ",
            "--flag=",
            "--",
            "<<",
            "<<-",
            "EOF",
            "'EOF'",
            "\"",
            "'",
            "\\",
            "`",
            "\n",
            "\r\n",
            "\t",
            " ",
            "#",
            "# escape=`\n",
            "# syntax=x\n",
            "$",
            "${",
            "}",
            ":-",
            ":+",
            ":?",
            "?",
            "#",
            "##",
            "%",
            "%%",
            "/",
            "//",
            "*",
            "[",
            "]",
            "[\"a\"",
            ", ",
            "=",
            "a",
            "B_1",
            "é",
            "\u{feff}",
            "1",
            "!",
            "-",
        ];

        fn tokens() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(TOKENS), 0..40).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn parse_and_expand_never_panic(s in tokens()) {
                let _ = parse(s.as_bytes());
                let vars: HashMap<String, String> =
                    [("a".to_string(), "x y*".to_string())].into_iter().collect();
                for esc in ['\\', '`'] {
                    let _ = expand_word(&s, &vars, esc);
                    let _ = expand_words(&s, &vars, esc);
                    let _ = expand_heredoc(&s, &vars, esc);
                    let _ = referenced_vars(&s, esc);
                }
            }

            #[test]
            fn expand_never_panics_on_any_string(s in "\\PC{0,60}") {
                let vars: HashMap<String, String> = HashMap::new();
                let _ = expand_word(&s, &vars, '\\');
                let _ = expand_words(&s, &vars, '`');
                let _ = parse(s.as_bytes());
            }
        }
    }
}
