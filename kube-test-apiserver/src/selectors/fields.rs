//! Field selectors (`spec.nodeName=node-1,metadata.name!=x`), parsed as
//! `k8s.io/apimachinery/pkg/fields.ParseSelector` does and matched against a function that yields an
//! object's field values. Which field labels a resource supports is decided by `resources`.

use super::SelectorError;

/// Operator of a field requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOp {
    Equals,
    NotEquals,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub op: FieldOp,
    pub value: String,
}

/// A parsed field selector (`spec.nodeName=node-1,metadata.name!=x`). Which fields are allowed is
/// decided per resource by the caller; this type only parses and matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parse as `k8s.io/apimachinery/pkg/fields.ParseSelector` does: terms split on unescaped `,`,
    /// operators `!=`, `==`, `=` (first found wins), `\` escapes `,`, `=` and `\` in values.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if input.is_empty() {
            return Ok(FieldSelector { requirements });
        }
        for term in split_unescaped(input, ',') {
            if term.is_empty() {
                continue;
            }
            let (field, op, raw_value) = split_term(&term).ok_or_else(|| {
                SelectorError(format!(
                    "invalid selector: '{input}'; can't understand '{term}'"
                ))
            })?;
            let value = unescape(raw_value)?;
            requirements.push(FieldRequirement {
                field: field.to_owned(),
                op,
                value,
            });
        }
        Ok(FieldSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Does an object match, given a function that yields the value of a field label?
    pub fn matches(&self, field_value: impl Fn(&str) -> String) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(&r.field);
            match r.op {
                FieldOp::Equals => actual == r.value,
                FieldOp::NotEquals => actual != r.value,
            }
        })
    }
}

/// Split on `sep` unless preceded by a backslash escape; escapes are kept for `unescape`.
fn split_unescaped(input: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in input.chars() {
        if escaped {
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            current.push(c);
            escaped = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// Find the first unescaped operator in a term.
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], FieldOp::NotEquals, &term[i + 2..]));
            }
            b'=' if bytes.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], FieldOp::Equals, &term[i + 2..]));
            }
            b'=' => return Some((&term[..i], FieldOp::Equals, &term[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

/// The value with its escapes resolved; a bad escape is refused with the API server's message.
fn unescape(s: &str) -> Result<String, SelectorError> {
    let invalid = |why: String| SelectorError(format!("invalid field selector value {s:?}: {why}"));
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(other) => return Err(invalid(format!("invalid escape sequence \\{other}"))),
                None => return Err(invalid("unterminated escape sequence".into())),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selector_parses_and_matches() {
        let f = FieldSelector::parse("spec.nodeName=n1,metadata.name!=x").unwrap();
        assert_eq!(f.requirements.len(), 2);
        let get = |field: &str| match field {
            "spec.nodeName" => "n1".to_owned(),
            "metadata.name" => "p".to_owned(),
            _ => String::new(),
        };
        assert!(f.matches(get));
        let f = FieldSelector::parse("spec.nodeName==n2").unwrap();
        assert!(!f.matches(get));
        let f = FieldSelector::parse(r"metadata.name=a\,b").unwrap();
        assert_eq!(f.requirements[0].value, "a,b");
        assert!(FieldSelector::parse("nonsense").is_err());
        assert!(FieldSelector::parse("").unwrap().is_empty());
    }
}
