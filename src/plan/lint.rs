//! `--check`: build checks on a parsed Dockerfile, under BuildKit's rule names, for the
//! rules that need no build state. Each warning names its line.

use crate::dockerfile::ast::{Args, CommandLine, Dockerfile, Instruction, Keyword};

/// One check that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// BuildKit's rule name (`FromAsCasing`, ...).
    pub rule: &'static str,
    /// The line of the instruction.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl Warning {
    /// Where BuildKit documents the rule.
    pub fn url(&self) -> String {
        let mut slug = String::new();
        for (i, c) in self.rule.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                slug.push('-');
            }
            slug.push(c.to_ascii_lowercase());
        }
        format!("https://docs.docker.com/go/dockerfile/rule/{slug}/")
    }
}

/// The checks of `df`, in line order.
pub fn check(df: &Dockerfile) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut stage_names: Vec<String> = Vec::new();
    for inst in &df.instructions {
        let line = inst.span.start;
        let mut warn = |rule, message: String| {
            out.push(Warning {
                rule,
                line,
                message,
            })
        };
        match (&inst.keyword, &inst.args) {
            (
                Keyword::From,
                Args::From {
                    alias: Some(alias), ..
                },
            ) => {
                from_as_casing(inst, &mut warn);
                if alias.chars().any(|c| c.is_ascii_uppercase()) {
                    warn(
                        "StageNameCasing",
                        format!("Stage name '{alias}' should be lowercase"),
                    );
                }
                let lower = alias.to_lowercase();
                if stage_names.contains(&lower) {
                    warn(
                        "DuplicateStageName",
                        format!("Duplicate stage name \"{lower}\", stage names should be unique"),
                    );
                }
                stage_names.push(lower);
            }
            (Keyword::Cmd | Keyword::Entrypoint, Args::Command { command, .. }) => {
                if matches!(command, CommandLine::Shell(_)) {
                    let kw = if inst.keyword == Keyword::Cmd {
                        "CMD"
                    } else {
                        "ENTRYPOINT"
                    };
                    warn(
                        "JSONArgsRecommended",
                        format!("JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals"),
                    );
                }
            }
            (Keyword::Maintainer, _) => warn(
                "MaintainerDeprecated",
                "Maintainer instruction is deprecated in favor of using label".into(),
            ),
            _ => {}
        }
    }
    out
}

/// `FROM x as y`: the `AS` keyword's casing should match `FROM`'s.
fn from_as_casing(inst: &Instruction, warn: &mut impl FnMut(&'static str, String)) {
    let words: Vec<&str> = inst.original.split_whitespace().collect();
    let (Some(from), Some(as_kw)) = (
        words.first(),
        words
            .iter()
            .rev()
            .nth(1)
            .filter(|w| w.eq_ignore_ascii_case("as")),
    ) else {
        return;
    };
    let upper = |w: &str| w.chars().all(|c| c.is_ascii_uppercase());
    let lower = |w: &str| w.chars().all(|c| c.is_ascii_lowercase());
    if (upper(from) && !upper(as_kw)) || (lower(from) && !lower(as_kw)) {
        warn(
            "FromAsCasing",
            format!("'{as_kw}' and '{from}' keywords' casing do not match"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_their_lines() {
        let df = crate::dockerfile::parse(
            b"FROM scratch as Build\nFROM scratch AS build\nCMD echo hi\nMAINTAINER me\nENTRYPOINT [\"x\"]\n",
        )
        .unwrap();
        let got: Vec<(&str, usize)> = check(&df).iter().map(|w| (w.rule, w.line)).collect();
        assert_eq!(
            got,
            [
                ("FromAsCasing", 1),
                ("StageNameCasing", 1),
                ("DuplicateStageName", 2),
                ("JSONArgsRecommended", 3),
                ("MaintainerDeprecated", 4)
            ]
        );
        let w = &check(&df)[0];
        assert_eq!(
            w.url(),
            "https://docs.docker.com/go/dockerfile/rule/from-as-casing/"
        );
        let clean = crate::dockerfile::parse(b"FROM scratch AS a\nCMD [\"x\"]\n").unwrap();
        assert!(check(&clean).is_empty());
    }
}
