//! `--chmod` values: octal (`755`) or symbolic (`u=rwX,go=rX`, `+x`, `a-w`).

use anyhow::{bail, Result};

/// One `who op perms` clause of a symbolic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The classes affected: user, group, other bits.
    who: u32,
    op: char,
    perms: String,
}

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// An absolute octal mode.
    Octal(u32),
    /// Symbolic clauses applied in order.
    Symbolic(Vec<Clause>),
}

const WHO_U: u32 = 0b100;
const WHO_G: u32 = 0b010;
const WHO_O: u32 = 0b001;

impl Chmod {
    /// Parses an octal or symbolic mode.
    pub fn parse(s: &str) -> Result<Chmod> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let mode = u32::from_str_radix(s, 8)
                .map_err(|_| anyhow::anyhow!("invalid --chmod value {s:?}: not an octal mode"))?;
            if mode > 0o7777 {
                bail!("invalid --chmod value {s:?}: mode out of range");
            }
            return Ok(Chmod::Octal(mode));
        }
        let mut clauses = Vec::new();
        for part in s.split(',') {
            let ops_at = part
                .find(['+', '-', '='])
                .ok_or_else(|| anyhow::anyhow!("invalid --chmod value {s:?}"))?;
            let (who_s, rest) = part.split_at(ops_at);
            let mut who = 0;
            for c in who_s.chars() {
                who |= match c {
                    'u' => WHO_U,
                    'g' => WHO_G,
                    'o' => WHO_O,
                    'a' => WHO_U | WHO_G | WHO_O,
                    _ => bail!("invalid --chmod value {s:?}: unknown class {c:?}"),
                };
            }
            if who == 0 {
                who = WHO_U | WHO_G | WHO_O;
            }
            let mut chars = rest.chars().peekable();
            while let Some(op) = chars.next() {
                let mut perms = String::new();
                while let Some(&c) = chars.peek() {
                    if "+-=".contains(c) {
                        break;
                    }
                    if !"rwxXst".contains(c) {
                        bail!("invalid --chmod value {s:?}: unknown permission {c:?}");
                    }
                    perms.push(c);
                    chars.next();
                }
                clauses.push(Clause { who, op, perms });
            }
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode a file or directory gets, from its current `mode` (permission bits).
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = mode & 0o7777;
        for c in clauses {
            let any_exec = mode & 0o111 != 0;
            let mut bits = 0;
            for p in c.perms.chars() {
                let rwx = match p {
                    'r' => 0o4,
                    'w' => 0o2,
                    'x' => 0o1,
                    'X' if is_dir || any_exec => 0o1,
                    _ => 0,
                };
                for (flag, shift) in [(WHO_U, 6), (WHO_G, 3), (WHO_O, 0)] {
                    if c.who & flag != 0 {
                        bits |= rwx << shift;
                    }
                }
                if p == 's' {
                    if c.who & WHO_U != 0 {
                        bits |= 0o4000;
                    }
                    if c.who & WHO_G != 0 {
                        bits |= 0o2000;
                    }
                }
                if p == 't' {
                    bits |= 0o1000;
                }
            }
            let mut mask = 0;
            for (flag, m) in [(WHO_U, 0o4700), (WHO_G, 0o2070), (WHO_O, 0o1007)] {
                if c.who & flag != 0 {
                    mask |= m;
                }
            }
            mode = match c.op {
                '+' => mode | bits,
                '-' => mode & !bits,
                _ => (mode & !mask) | bits,
            };
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal() {
        assert_eq!(Chmod::parse("755").unwrap().apply(0o600, false), 0o755);
        assert_eq!(Chmod::parse("0640").unwrap().apply(0o777, true), 0o640);
        assert!(Chmod::parse("888").is_err());
        assert!(Chmod::parse("77777").is_err());
    }

    #[test]
    fn symbolic() {
        let m = Chmod::parse("u=rwX,go=rX").unwrap();
        assert_eq!(m.apply(0o600, false), 0o644);
        assert_eq!(m.apply(0o700, false), 0o755);
        assert_eq!(m.apply(0o700, true), 0o755);
        assert_eq!(m.apply(0o600, true), 0o755);
        assert_eq!(Chmod::parse("+x").unwrap().apply(0o644, false), 0o755);
        assert_eq!(Chmod::parse("a-w").unwrap().apply(0o666, false), 0o444);
        assert_eq!(
            Chmod::parse("g+s,o-rwx").unwrap().apply(0o775, true),
            0o2770
        );
        assert_eq!(Chmod::parse("u+x-w").unwrap().apply(0o644, false), 0o544);
        assert!(Chmod::parse("q=r").is_err());
        assert!(Chmod::parse("u=z").is_err());
        assert!(Chmod::parse("").is_err());
    }
}
