//! The Dockerfile syntax tree: instructions with their source spans, raw (unexpanded) words.
//!
//! Words keep their quotes and escapes: expansion (`super::expand`) removes them, because which
//! words are expanded depends on the instruction and on the build state (ARG/ENV in scope).

/// Lines an instruction covers in its file, 1-based and inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First line of the instruction (where its keyword is).
    pub start: usize,
    /// Last line, after continuations and heredoc bodies.
    pub end: usize,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    /// The escape character (`\` unless the `escape` directive says otherwise).
    pub escape: char,
    /// The `syntax` directive, if any (recorded, not acted upon).
    pub syntax: Option<String>,
    /// The `check` directive, if any.
    pub check: Option<String>,
    /// Every instruction in file order, including ARGs before the first FROM.
    pub instructions: Vec<Instruction>,
}

/// The instruction keywords of the Dockerfile reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keyword {
    From,
    Run,
    Cmd,
    Label,
    Maintainer,
    Expose,
    Env,
    Add,
    Copy,
    Entrypoint,
    Volume,
    User,
    Workdir,
    Arg,
    Onbuild,
    Stopsignal,
    Healthcheck,
    Shell,
}

/// A `--name[=value]` flag given to an instruction, value unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// Flag name without the leading dashes.
    pub name: String,
    /// Value after `=`, if any (`--link` has none).
    pub value: Option<String>,
}

/// A heredoc attached to an instruction (`<<EOF`, `<<-EOF`, `<<"EOF"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, without quotes.
    pub name: String,
    /// The body, each line ending in `\n`; leading tabs already removed for `<<-`.
    pub content: String,
    /// True when the delimiter was unquoted, so the body undergoes variable expansion.
    pub expand: bool,
}

/// A command line of RUN, CMD, ENTRYPOINT, SHELL or HEALTHCHECK CMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// JSON array form: the argv as given.
    Exec(Vec<String>),
    /// Shell form: the text after the keyword and flags, continuations joined, not expanded.
    Shell(String),
}

/// HEALTHCHECK arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`.
    None,
    /// `HEALTHCHECK [flags] CMD ...`.
    Cmd(CommandLine),
}

/// The arguments of an instruction, shaped by its keyword.
#[derive(Debug, Clone, PartialEq)]
pub enum Args {
    /// FROM `image` [AS `alias`]: raw words.
    From {
        image: String,
        alias: Option<String>,
    },
    /// RUN, CMD, ENTRYPOINT, SHELL (SHELL must be exec form; the parser enforces it).
    Command {
        command: CommandLine,
        heredocs: Vec<Heredoc>,
    },
    /// ENV and LABEL: raw `key`, raw `value` words (quotes kept), in order.
    /// The legacy `ENV key value` form yields one pair whose value is the rest of the line.
    KeyValues(Vec<(String, String)>),
    /// ARG `name[=default]`...: name, raw default word.
    Arg(Vec<(String, Option<String>)>),
    /// COPY and ADD: raw source words, raw destination word, heredocs named among the sources
    /// (a source `<<EOF` refers to the heredoc `EOF`).
    Copy {
        sources: Vec<String>,
        dest: String,
        heredocs: Vec<Heredoc>,
    },
    /// EXPOSE, VOLUME: raw words (VOLUME's JSON form is decoded into words).
    Words(Vec<String>),
    /// MAINTAINER, USER, WORKDIR, STOPSIGNAL: the raw rest of the line.
    Text(String),
    /// HEALTHCHECK.
    Healthcheck(Healthcheck),
    /// ONBUILD and the trigger instruction it wraps.
    Onbuild(Box<Instruction>),
}

/// One instruction as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// Where it is in the file.
    pub span: Span,
    /// Its keyword.
    pub keyword: Keyword,
    /// Its flags in order.
    pub flags: Vec<Flag>,
    /// Its arguments.
    pub args: Args,
    /// The instruction text without flags' line breaks: keyword, flags and arguments joined
    /// the way `docker history` shows them (continuations removed, heredoc bodies omitted).
    pub original: String,
}
