//! containerd's filter syntax, used by every List call.
//!
//! ```text
//! filters   := selector ("," selector)*        -- all selectors must match (and)
//! selector  := fieldpath [operator value]       -- no operator: the field is present
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="                -- ~= is a regular expression match
//! value     := quoted | [^,\s]+
//! quoted    := "..." or /.../ with backslash escapes
//! ```
//!
//! A request's repeated `filters` field matches when any one of its strings matches (or).

use regex::Regex;
use thiserror::Error;

/// What a filter string got wrong, and where.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("filter {input:?}: {problem} at position {position}")]
pub struct ParseError {
    pub input: String,
    pub position: usize,
    pub problem: String,
}

impl From<ParseError> for tonic::Status {
    fn from(err: ParseError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

/// How a selector compares its field with its value.
#[derive(Debug, Clone)]
pub enum Operator {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

/// One `fieldpath op value` term.
#[derive(Debug, Clone)]
pub struct Selector {
    pub fieldpath: Vec<String>,
    pub operator: Operator,
}

/// A parsed filter string: all of its selectors must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub selectors: Vec<Selector>,
}

/// Gives a filter the value of a field path on one object (`None` when absent).
pub trait Adaptor {
    fn field(&self, fieldpath: &[String]) -> Option<String>;
}

impl Filter {
    pub fn matches(&self, object: &dyn Adaptor) -> bool {
        self.selectors.iter().all(|selector| {
            let value = object.field(&selector.fieldpath);
            match (&selector.operator, value) {
                (Operator::Present, value) => value.is_some_and(|v| !v.is_empty()),
                (Operator::Equal(want), Some(value)) => &value == want,
                (Operator::NotEqual(want), Some(value)) => &value != want,
                (Operator::NotEqual(_), None) => true,
                (Operator::Matches(re), Some(value)) => re.is_match(&value),
                (_, None) => false,
            }
        })
    }
}

/// The filters of one List request: any of them matching is enough; none given matches all.
#[derive(Debug, Clone, Default)]
pub struct AnyOf(pub Vec<Filter>);

impl AnyOf {
    pub fn parse(filters: &[String]) -> Result<Self, ParseError> {
        let parsed =
            filters.iter().filter(|f| !f.trim().is_empty()).map(|f| parse(f)).collect::<Result<Vec<_>, _>>()?;
        Ok(AnyOf(parsed))
    }

    pub fn matches(&self, object: &dyn Adaptor) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(object))
    }
}

/// Parses one filter string.
pub fn parse(input: &str) -> Result<Filter, ParseError> {
    Parser { input, chars: input.char_indices().collect(), index: 0 }.filter()
}

/// Looks up `labels.<key>` in a label map: the key is the rest of the field path joined by dots.
pub fn label_field(labels: &std::collections::HashMap<String, String>, rest: &[String]) -> Option<String> {
    if rest.is_empty() {
        return None;
    }
    labels.get(&rest.join(".")).cloned()
}

struct Parser<'a> {
    input: &'a str,
    chars: Vec<(usize, char)>,
    index: usize,
}

impl Parser<'_> {
    fn error(&self, problem: impl Into<String>) -> ParseError {
        let position = self.chars.get(self.index).map_or(self.input.len(), |(p, _)| *p);
        ParseError { input: self.input.to_string(), position, problem: problem.into() }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.index).map(|(_, c)| *c)
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.index += 1;
        }
    }

    fn filter(mut self) -> Result<Filter, ParseError> {
        let mut selectors = Vec::new();
        loop {
            self.skip_spaces();
            selectors.push(self.selector()?);
            self.skip_spaces();
            match self.peek() {
                None => break,
                Some(',') => self.index += 1,
                Some(c) => {
                    return Err(self.error(format!("expected ',' or end of filter, found {c:?}")));
                }
            }
        }
        Ok(Filter { selectors })
    }

    fn selector(&mut self) -> Result<Selector, ParseError> {
        let mut fieldpath = vec![self.field()?];
        while self.peek() == Some('.') {
            self.index += 1;
            fieldpath.push(self.field()?);
        }
        self.skip_spaces();
        let operator = match (self.peek(), self.chars.get(self.index + 1).map(|(_, c)| *c)) {
            (Some('='), Some('=')) => Some("=="),
            (Some('!'), Some('=')) => Some("!="),
            (Some('~'), Some('=')) => Some("~="),
            (None | Some(','), _) => None,
            (Some(c), _) => {
                return Err(self.error(format!("expected an operator (==, != or ~=), found {c:?}")));
            }
        };
        let Some(operator) = operator else {
            return Ok(Selector { fieldpath, operator: Operator::Present });
        };
        self.index += 2;
        self.skip_spaces();
        let value_start = self.index;
        let value = self.value()?;
        let operator = match operator {
            "==" => Operator::Equal(value),
            "!=" => Operator::NotEqual(value),
            _ => match Regex::new(&value) {
                Ok(re) => Operator::Matches(re),
                Err(err) => {
                    self.index = value_start;
                    return Err(self.error(format!("invalid regular expression: {err}")));
                }
            },
        };
        Ok(Selector { fieldpath, operator })
    }

    fn field(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some('"') | Some('/') => self.quoted(),
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let mut field = String::new();
                while let Some(c) = self.peek().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
                    field.push(c);
                    self.index += 1;
                }
                Ok(field)
            }
            Some(c) => Err(self.error(format!("expected a field name, found {c:?}"))),
            None => Err(self.error("expected a field name, found the end of the filter")),
        }
    }

    fn value(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some('"') | Some('/') => self.quoted(),
            None | Some(',') => Err(self.error("expected a value after the operator")),
            Some(_) => {
                let mut value = String::new();
                while let Some(c) = self.peek().filter(|c| *c != ',' && !c.is_whitespace()) {
                    value.push(c);
                    self.index += 1;
                }
                Ok(value)
            }
        }
    }

    fn quoted(&mut self) -> Result<String, ParseError> {
        let quote = self.peek().expect("caller checked the opening quote");
        self.index += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(self.error(format!("unterminated quoted string, missing {quote}")));
                }
                Some(c) if c == quote => {
                    self.index += 1;
                    return Ok(text);
                }
                Some('\\') => {
                    self.index += 1;
                    let escaped = match self.peek() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('\\') => '\\',
                        Some(c) if c == quote => c,
                        // Inside /regex/ other escapes belong to the regex.
                        Some(c) if quote == '/' => {
                            text.push('\\');
                            c
                        }
                        Some(c) => return Err(self.error(format!("unknown escape sequence \\{c}"))),
                        None => return Err(self.error("unterminated escape sequence")),
                    };
                    text.push(escaped);
                    self.index += 1;
                }
                Some(c) => {
                    text.push(c);
                    self.index += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Object {
        name: &'static str,
        labels: HashMap<String, String>,
    }

    impl Adaptor for Object {
        fn field(&self, path: &[String]) -> Option<String> {
            match path.first().map(String::as_str) {
                Some("name") => Some(self.name.to_string()),
                Some("labels") => label_field(&self.labels, &path[1..]),
                _ => None,
            }
        }
    }

    fn object() -> Object {
        let labels = [("a.b".to_string(), "v".to_string()), ("plain".to_string(), "x y".to_string())];
        Object { name: "sha256:abc", labels: labels.into_iter().collect() }
    }

    #[test]
    fn matches_containerd_examples() {
        let o = object();
        for (filter, want) in [
            (r#"labels."a.b"==v"#, true),
            ("labels.a.b==v", true),
            ("labels.a.b!=v", false),
            ("labels.missing!=v", true),
            ("labels.plain", true),
            ("labels.missing", false),
            (r#"labels.plain=="x y""#, true),
            ("name~=^sha256:", true),
            ("name~=/^sha512/", false),
            ("name==sha256:abc,labels.plain", true),
            ("name==sha256:abc,labels.missing", false),
        ] {
            assert_eq!(parse(filter).unwrap().matches(&o), want, "{filter}");
        }
    }

    #[test]
    fn any_of_is_or_and_empty_matches_all() {
        let o = object();
        assert!(AnyOf::parse(&[]).unwrap().matches(&o));
        let any = AnyOf::parse(&["name==x".into(), "labels.plain".into()]).unwrap();
        assert!(any.matches(&o));
    }

    #[test]
    fn errors_say_where() {
        let err = parse("labels.a >< 1").unwrap_err();
        assert_eq!(err.position, 9);
        assert!(err.to_string().contains("operator"), "{err}");
        assert!(parse("name==").is_err());
        assert!(parse(r#"labels."unterminated"#).is_err());
        assert!(parse("name~=(").unwrap_err().to_string().contains("regular expression"));
        assert!(parse(",").is_err());
    }
}
