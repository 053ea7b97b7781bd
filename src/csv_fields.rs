//! The comma-separated `key=value` syntax of `RUN --mount`, `-o/--output` and friends, with
//! CSV quoting as buildx and BuildKit read it: `type=registry,"name=a:1,a:2"`.

use anyhow::{bail, Result};

/// The fields of a value: comma-separated, with CSV quoting (`"a,b"` is one field, `""`
/// a quote inside quotes); empty fields dropped.
pub fn csv_fields(value: &str) -> Result<Vec<String>> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        bail!("unterminated quote in {value:?}");
    }
    fields.push(cur);
    Ok(fields
        .into_iter()
        .filter(|f| !f.trim().is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_keep_their_commas() {
        assert_eq!(csv_fields("a=1,b=2").unwrap(), ["a=1", "b=2"]);
        assert_eq!(
            csv_fields(r#"type=registry,"name=x:1,x:2""#).unwrap(),
            ["type=registry", "name=x:1,x:2"]
        );
        assert_eq!(
            csv_fields(r#""say ""hi""",,x"#).unwrap(),
            [r#"say "hi""#, "x"]
        );
        assert!(csv_fields(r#"a="b"#).is_err());
    }
}
