//! Label and field selectors, parsed and matched the way the Kubernetes API server does
//! (`k8s.io/apimachinery/pkg/labels` and `pkg/fields`).
//!
//! This module owns the selector grammar, validation and matching only: label selectors here, field
//! selectors in `fields`. It knows nothing about which
//! field labels a resource supports (that is `resources`) nor about HTTP (that is `handlers`).
//!
//! Label selector grammar (the one `kubectl -l` and every client library send):
//! ```text
//! selector    = "" | requirement { "," requirement }
//! requirement = key | "!" key | key ("=" | "==" | "!=") value | key ("in" | "notin") "(" values ")"
//!             | key (">" | "<") integer
//! ```
//! Whitespace between tokens is ignored. Keys are qualified names (`[prefix/]name`), values are label
//! values (empty or up to 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

mod fields;

pub use fields::{FieldOp, FieldRequirement, FieldSelector};

/// A selector that did not parse or validate. The message is what the API server puts in the
/// 400 Status body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

/// Operator of one label requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `key=value`
    Equals,
    /// `key==value`
    DoubleEquals,
    /// `key!=value`
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)`
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
    /// `key>n`
    GreaterThan,
    /// `key<n`
    LessThan,
}

/// One requirement of a label selector. `values` is sorted and deduplicated (a set, as in Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    /// Does this requirement hold for a label set?
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                value.is_some_and(|v| self.values.iter().any(|want| want == v))
            }
            Operator::NotEquals | Operator::NotIn => {
                value.is_none_or(|v| !self.values.iter().any(|want| want == v))
            }
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                // Kubernetes: the label must exist and parse as an integer; the operand was validated
                // at parse time.
                let (Some(v), Some(operand)) = (value, self.values.first()) else {
                    return false;
                };
                let (Ok(v), Ok(operand)) = (v.parse::<i64>(), operand.parse::<i64>()) else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    v > operand
                } else {
                    v < operand
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.values.first().map(String::as_str).unwrap_or("");
        match self.op {
            Operator::Equals => write!(f, "{}={}", self.key, first),
            Operator::DoubleEquals => write!(f, "{}=={}", self.key, first),
            Operator::NotEquals => write!(f, "{}!={}", self.key, first),
            Operator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::GreaterThan => write!(f, "{}>{}", self.key, first),
            Operator::LessThan => write!(f, "{}<{}", self.key, first),
        }
    }
}

/// A parsed label selector: all requirements must hold (logical AND). Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parse a selector string as sent in the `labelSelector` query parameter.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        Parser::new(input).parse()
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Match against an object's `metadata.labels` (absent labels = empty set).
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        self.matches(&object_labels(obj))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// `metadata.labels` of an object as a map; non-string values are ignored (they cannot be stored
/// by a real API server anyway).
pub fn object_labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Identifier(String),
    Bang,
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    GreaterThan,
    LessThan,
    OpenParen,
    CloseParen,
    Comma,
    End,
}

impl Token {
    /// The literal as Kubernetes prints it in "found '…'" messages.
    fn literal(&self) -> &str {
        match self {
            Token::Identifier(s) => s,
            Token::Bang => "!",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::NotEquals => "!=",
            Token::In => "in",
            Token::NotIn => "notin",
            Token::GreaterThan => ">",
            Token::LessThan => "<",
            Token::OpenParen => "(",
            Token::CloseParen => ")",
            Token::Comma => ",",
            Token::End => "",
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Split the input into tokens first (as the Kubernetes lexer does), then parse with one token of
/// look-ahead.
fn lex(input: &str) -> Vec<Token> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if is_special(c) {
            let next = chars.get(i + 1).copied();
            let (tok, len) = match (c, next) {
                ('!', Some('=')) => (Token::NotEquals, 2),
                ('=', Some('=')) => (Token::DoubleEquals, 2),
                ('!', _) => (Token::Bang, 1),
                ('=', _) => (Token::Equals, 1),
                ('(', _) => (Token::OpenParen, 1),
                (')', _) => (Token::CloseParen, 1),
                (',', _) => (Token::Comma, 1),
                ('>', _) => (Token::GreaterThan, 1),
                _ => (Token::LessThan, 1),
            };
            tokens.push(tok);
            i += len;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !is_special(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        tokens.push(match word.as_str() {
            "in" => Token::In,
            "notin" => Token::NotIn,
            _ => Token::Identifier(word),
        });
    }
    tokens.push(Token::End);
    tokens
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn new(input: &str) -> Self {
        Parser {
            tokens: lex(input),
            pos: 0,
        }
    }

    fn peek(&self) -> &Token {
        self.tokens.get(self.pos).unwrap_or(&Token::End)
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn parse(mut self) -> Result<LabelSelector, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            match self.peek() {
                Token::End if requirements.is_empty() => break,
                Token::Identifier(_) | Token::Bang => {
                    requirements.push(self.requirement()?);
                    match self.next() {
                        Token::End => break,
                        Token::Comma => {
                            if !matches!(self.peek(), Token::Identifier(_) | Token::Bang) {
                                return Err(SelectorError(format!(
                                    "found '{}', expected: identifier after ','",
                                    self.peek().literal()
                                )));
                            }
                        }
                        other => {
                            return Err(SelectorError(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                other.literal()
                            )));
                        }
                    }
                }
                other => {
                    return Err(SelectorError(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        other.literal()
                    )));
                }
            }
        }
        Ok(LabelSelector { requirements })
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if *self.peek() == Token::Bang {
            self.next();
            let key = self.identifier("identifier after '!'")?;
            validate_key(&key)?;
            return Ok(Requirement {
                key,
                op: Operator::DoesNotExist,
                values: Vec::new(),
            });
        }
        let key = self.identifier("identifier")?;
        validate_key(&key)?;
        if matches!(self.peek(), Token::End | Token::Comma) {
            return Ok(Requirement {
                key,
                op: Operator::Exists,
                values: Vec::new(),
            });
        }
        let op = match self.next() {
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::NotEquals => Operator::NotEquals,
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            other => {
                return Err(SelectorError(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    other.literal()
                )));
            }
        };
        let mut values = match op {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => vec![self.exact_value()?],
        };
        for v in &values {
            validate_value(v)?;
        }
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(SelectorError(
                    "for 'in', 'notin' operators, values set can't be empty".into(),
                ));
            }
            Operator::GreaterThan | Operator::LessThan => {
                let v = values.first().map(String::as_str).unwrap_or("");
                if v.parse::<i64>().is_err() {
                    return Err(SelectorError(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"
                    )));
                }
            }
            _ => {}
        }
        values.sort();
        values.dedup();
        Ok(Requirement { key, op, values })
    }

    fn identifier(&mut self, expected: &str) -> Result<String, SelectorError> {
        match self.next() {
            Token::Identifier(s) => Ok(s),
            other => Err(SelectorError(format!(
                "found '{}', expected: {expected}",
                other.literal()
            ))),
        }
    }

    /// Value after `=`, `==`, `!=`, `>`, `<`: an identifier, or empty when the requirement ends here.
    fn exact_value(&mut self) -> Result<String, SelectorError> {
        match self.peek().clone() {
            Token::End | Token::Comma => Ok(String::new()),
            Token::Identifier(s) => {
                self.next();
                Ok(s)
            }
            // Kubernetes lets the keywords stand as values (`a=in`).
            Token::In | Token::NotIn => Ok(self.next().literal().to_owned()),
            other => Err(SelectorError(format!(
                "found '{}', expected: identifier",
                other.literal()
            ))),
        }
    }

    /// `( v1, v2, … )`; empty members (`(a,,b)`) are empty-string values as in Kubernetes.
    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        match self.next() {
            Token::OpenParen => {}
            other => {
                return Err(SelectorError(format!(
                    "found '{}', expected: '('",
                    other.literal()
                )));
            }
        }
        let mut values = Vec::new();
        if *self.peek() == Token::CloseParen {
            self.next();
            return Ok(values);
        }
        loop {
            match self.peek().clone() {
                Token::Identifier(s) => {
                    self.next();
                    values.push(s);
                }
                Token::In | Token::NotIn => values.push(self.next().literal().to_owned()),
                Token::Comma | Token::CloseParen => values.push(String::new()),
                other => {
                    return Err(SelectorError(format!(
                        "found '{}', expected: ',', ')' or identifier",
                        other.literal()
                    )));
                }
            }
            match self.next() {
                Token::Comma => continue,
                Token::CloseParen => return Ok(values),
                other => {
                    return Err(SelectorError(format!(
                        "found '{}', expected: ',' or ')'",
                        other.literal()
                    )));
                }
            }
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A label name part or value: up to 63 characters, `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn valid_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(is_name_char)
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// DNS-1123 subdomain: lower-case alphanumerics, `-` and `.`, alphanumeric at both ends, ≤ 253.
fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn validate_key(key: &str) -> Result<(), SelectorError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !valid_dns_subdomain(p)
    {
        return Err(SelectorError(format!(
            "unable to parse requirement: key: Invalid value: {key:?}: prefix part must be a \
             lowercase RFC 1123 subdomain"
        )));
    }
    if !valid_name_part(name) {
        return Err(SelectorError(format!(
            "unable to parse requirement: key: Invalid value: {key:?}: name part must consist of \
             alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric \
             character (at most 63 characters)"
        )));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), SelectorError> {
    if value.is_empty() || valid_name_part(value) {
        Ok(())
    } else {
        Err(SelectorError(format!(
            "unable to parse requirement: values[0][{value}]: Invalid value: {value:?}: a valid \
             label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character (at most 63 characters)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s =
            LabelSelector::parse("nodename=n1, a==b,c!=d,e in (x, y),f notin (z),g,!h,i>3,j<10")
                .unwrap();
        let ops: Vec<Operator> = s.requirements.iter().map(|r| r.op).collect();
        assert_eq!(
            ops,
            vec![
                Operator::Equals,
                Operator::DoubleEquals,
                Operator::NotEquals,
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
                Operator::GreaterThan,
                Operator::LessThan
            ]
        );
        assert_eq!(s.requirements[3].values, vec!["x", "y"]);
    }

    #[test]
    fn matching_follows_kubernetes() {
        let l = labels(&[("nodename", "n1"), ("n", "5")]);
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(m("nodename=n1"));
        assert!(!m("nodename=n2"));
        assert!(m("nodename!=n2"));
        assert!(m("other!=x"), "!= matches when the label is absent");
        assert!(
            m("other notin (x)"),
            "notin matches when the label is absent"
        );
        assert!(!m("other in (x)"));
        assert!(m("nodename in (n0,n1)"));
        assert!(m("!other"));
        assert!(!m("!nodename"));
        assert!(m("n>4") && !m("n>5") && m("n<6"));
        assert!(m(""));
        assert!(!m("nodename=n1,other"));
    }

    #[test]
    fn empty_value_is_allowed() {
        let s = LabelSelector::parse("a=,b").unwrap();
        assert_eq!(s.requirements[0].values, vec![""]);
        assert!(s.matches(&labels(&[("a", ""), ("b", "x")])));
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in [
            "a=b,",
            ",a",
            "a in ()",
            "a in (b",
            "a b",
            "=a",
            "a>x",
            "-a=b",
            "a=-b",
            "a/b/c=d",
            "UPPER.case/x=y",
            "a=b)",
            "!",
        ] {
            assert!(
                LabelSelector::parse(bad).is_err(),
                "{bad:?} must be refused"
            );
        }
    }
}
