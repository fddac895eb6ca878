//! Search filters on feature values.
//!
//! A filter is comparisons of feature fields with literals, joined by `and`, `or`, `not` and
//! parentheses:
//!
//! ```text
//! stats:rating >= 4.5 and not (stats:city in ["Oslo", "Bergen"] or stats:banned = true)
//! ```
//!
//! Fields are `view:field`, or a bare `field` when exactly one view of the collection has
//! it. Operators: `=` (or `==`), `!=`, `<`, `<=`, `>`, `>=`, `in [..]`. Literals: `true`,
//! `false`, integers, decimals, and strings in single or double quotes (`\` escapes the
//! quote and itself); a timestamp field compares with an RFC 3339 string or microseconds.
//!
//! Logic is SQL's: a comparison on a point without a row in the view, with an expired row
//! (TTL) or with a null value is unknown, `not unknown` is unknown, and only points for
//! which the whole filter is true match.

use std::cmp::Ordering;

use crate::{Error, FeatureType, FeatureValue, FeatureViewSpec, Result};

/// Longest filter text, in bytes.
pub const MAX_FILTER_LEN: usize = 16 * 1024;
/// Deepest nesting of `not` and parentheses.
pub const MAX_FILTER_DEPTH: usize = 32;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Eq => ord.is_eq(),
            CmpOp::Ne => ord.is_ne(),
            CmpOp::Lt => ord.is_lt(),
            CmpOp::Le => ord.is_le(),
            CmpOp::Gt => ord.is_gt(),
            CmpOp::Ge => ord.is_ge(),
        }
    }
}

/// A literal as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// A filter expression over fields `F` and values `V`: parsed, [`Filter<String, Literal>`];
/// resolved against views, [`Filter<FieldSlot, FeatureValue>`].
#[derive(Debug, Clone, PartialEq)]
pub enum Filter<F = String, V = Literal> {
    And(Vec<Filter<F, V>>),
    Or(Vec<Filter<F, V>>),
    Not(Box<Filter<F, V>>),
    Cmp { field: F, op: CmpOp, value: V },
    In { field: F, values: Vec<V> },
}

/// A resolved field: the view's position in [`ResolvedFilter::views`] and the field's
/// position in that view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSlot {
    pub view: usize,
    pub field: usize,
}

/// A view a resolved filter reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterView {
    pub id: u64,
    /// 0: rows never expire.
    pub ttl_micros: i64,
}

/// A filter checked against a collection's views, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedFilter {
    pub expr: Filter<FieldSlot, FeatureValue>,
    pub views: Vec<FilterView>,
}

impl Filter {
    /// Parses filter text.
    pub fn parse(text: &str) -> Result<Filter> {
        if text.len() > MAX_FILTER_LEN {
            return Err(Error::invalid(format!(
                "filter is {} bytes; at most {MAX_FILTER_LEN}",
                text.len()
            )));
        }
        let tokens = tokenize(text)?;
        let mut parser = Parser { tokens, at: 0 };
        let filter = parser.or(0)?;
        match parser.peek() {
            None => Ok(filter),
            Some((token, col)) => Err(syntax(col, format!("unexpected {token}"))),
        }
    }

    /// The field references the filter names ("view:field" or a bare "field"), in order.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Filter::And(parts) | Filter::Or(parts) => {
                parts.iter().flat_map(Filter::fields).collect()
            }
            Filter::Not(inner) => inner.fields(),
            Filter::Cmp { field, .. } | Filter::In { field, .. } => vec![field.as_str()],
        }
    }

    /// Checks every field against `views` (the collection's views with their ids) and
    /// converts literals to the fields' types. `parse_timestamp` reads timestamp strings.
    pub fn resolve(
        self,
        views: &[(u64, &FeatureViewSpec)],
        parse_timestamp: &dyn Fn(&str) -> Result<i64>,
    ) -> Result<ResolvedFilter> {
        let mut used: Vec<FilterView> = Vec::new();
        let expr = self.resolve_in(views, parse_timestamp, &mut used)?;
        Ok(ResolvedFilter { expr, views: used })
    }

    fn resolve_in(
        self,
        views: &[(u64, &FeatureViewSpec)],
        parse_ts: &dyn Fn(&str) -> Result<i64>,
        used: &mut Vec<FilterView>,
    ) -> Result<Filter<FieldSlot, FeatureValue>> {
        let all = |parts: Vec<Filter>, used: &mut Vec<FilterView>| {
            parts
                .into_iter()
                .map(|p| p.resolve_in(views, parse_ts, used))
                .collect::<Result<Vec<_>>>()
        };
        Ok(match self {
            Filter::And(parts) => Filter::And(all(parts, used)?),
            Filter::Or(parts) => Filter::Or(all(parts, used)?),
            Filter::Not(inner) => Filter::Not(Box::new(inner.resolve_in(views, parse_ts, used)?)),
            Filter::Cmp { field, op, value } => {
                let (slot, ty) = resolve_field(&field, views, used)?;
                let ordered = !matches!(ty, FeatureType::Bool);
                if !ordered && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                    return Err(Error::invalid(format!(
                        "filter: {field} is a bool; compare it with = or !="
                    )));
                }
                let value = typed(&field, ty, value, parse_ts)?;
                Filter::Cmp {
                    field: slot,
                    op,
                    value,
                }
            }
            Filter::In { field, values } => {
                let (slot, ty) = resolve_field(&field, views, used)?;
                let values = values
                    .into_iter()
                    .map(|v| typed(&field, ty, v, parse_ts))
                    .collect::<Result<_>>()?;
                Filter::In {
                    field: slot,
                    values,
                }
            }
        })
    }
}

fn resolve_field(
    name: &str,
    views: &[(u64, &FeatureViewSpec)],
    used: &mut Vec<FilterView>,
) -> Result<(FieldSlot, FeatureType)> {
    let found: Vec<(u64, &FeatureViewSpec, usize, FeatureType)> = match name.split_once(':') {
        Some((view, field)) => {
            let (id, spec) = views
                .iter()
                .find(|(_, spec)| spec.name == view)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "filter: {view:?} is not a feature view of this collection"
                    ))
                })?;
            let (index, f) = spec.field(field).ok_or_else(|| {
                Error::invalid(format!(
                    "filter: feature view {view:?} has no field {field:?}"
                ))
            })?;
            vec![(*id, *spec, index, f.ty)]
        }
        None => views
            .iter()
            .filter_map(|(id, spec)| spec.field(name).map(|(i, f)| (*id, *spec, i, f.ty)))
            .collect(),
    };
    let (id, spec, field, ty) = match found.as_slice() {
        [one] => *one,
        [] => {
            return Err(Error::invalid(format!(
                "filter: no feature view of this collection has a field {name:?}"
            )))
        }
        several => {
            let names: Vec<&str> = several.iter().map(|f| f.1.name.as_str()).collect();
            return Err(Error::invalid(format!(
                "filter: field {name:?} is in views {names:?}; write VIEW:{name}"
            )));
        }
    };
    if matches!(ty, FeatureType::Bytes | FeatureType::FloatList) {
        return Err(Error::invalid(format!(
            "filter: {name} is of type {ty}, which filters cannot compare"
        )));
    }
    let view = match used.iter().position(|v| v.id == id) {
        Some(at) => at,
        None => {
            used.push(FilterView {
                id,
                ttl_micros: i64::try_from(spec.ttl_seconds.saturating_mul(1_000_000))
                    .unwrap_or(i64::MAX),
            });
            used.len() - 1
        }
    };
    Ok((FieldSlot { view, field }, ty))
}

/// `value` as a value of a field of type `ty`; integers compare with doubles as numbers.
fn typed(
    field: &str,
    ty: FeatureType,
    value: Literal,
    parse_ts: &dyn Fn(&str) -> Result<i64>,
) -> Result<FeatureValue> {
    Ok(match (ty, value) {
        (FeatureType::Bool, Literal::Bool(b)) => FeatureValue::Bool(b),
        (FeatureType::Int64, Literal::Int(n)) => FeatureValue::Int64(n),
        (FeatureType::Int64 | FeatureType::Double, Literal::Float(x)) => FeatureValue::Double(x),
        (FeatureType::Double, Literal::Int(n)) => FeatureValue::Double(n as f64),
        (FeatureType::String, Literal::Str(s)) => FeatureValue::String(s),
        (FeatureType::Timestamp, Literal::Int(n)) => FeatureValue::Timestamp(n),
        (FeatureType::Timestamp, Literal::Str(s)) => FeatureValue::Timestamp(
            parse_ts(&s).map_err(|e| Error::invalid(format!("filter: {field}: {}", e.message)))?,
        ),
        (ty, value) => {
            return Err(Error::invalid(format!(
                "filter: {field} is of type {ty}; {value:?} is not a {ty} value"
            )))
        }
    })
}

/// How a stored value compares with a filter's value; `None` when they do not compare.
fn compare(stored: &FeatureValue, wanted: &FeatureValue) -> Option<Ordering> {
    use FeatureValue as V;
    match (stored, wanted) {
        (V::Bool(a), V::Bool(b)) => Some(a.cmp(b)),
        (V::Int64(a), V::Int64(b)) => Some(a.cmp(b)),
        (V::Int64(a), V::Double(b)) => compare_int_with_float(*a, *b),
        (V::Double(a), V::Double(b)) => a.partial_cmp(b),
        (V::String(a), V::String(b)) => Some(a.cmp(b)),
        (V::Timestamp(a), V::Timestamp(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// `a` against `b` exactly, without rounding `a` to a double (which loses integers past 2^53).
fn compare_int_with_float(a: i64, b: f64) -> Option<Ordering> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if b.is_nan() {
        return None;
    }
    if b >= TWO_63 {
        return Some(Ordering::Less);
    }
    if b < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = b.trunc();
    // In range: the whole part is an i64 exactly; the fraction breaks a tie.
    Some(a.cmp(&(whole as i64)).then(whole.partial_cmp(&b)?))
}

impl Filter<FieldSlot, FeatureValue> {
    /// `decisive` if a part is, else unknown if a part is, else `!decisive`.
    fn decide(parts: &[Self], rows: &[Option<&[FeatureValue]>], decisive: bool) -> Option<bool> {
        let mut unknown = false;
        for part in parts {
            match part.eval(rows) {
                Some(b) if b == decisive => return Some(decisive),
                Some(_) => {}
                None => unknown = true,
            }
        }
        (!unknown).then_some(!decisive)
    }

    /// Evaluates the filter for one point: `rows[i]` is its live row in view `i` of
    /// [`ResolvedFilter::views`], if it has one. `None` is unknown.
    pub fn eval(&self, rows: &[Option<&[FeatureValue]>]) -> Option<bool> {
        let value = |slot: &FieldSlot| {
            rows.get(slot.view)
                .copied()
                .flatten()
                .and_then(|row| row.get(slot.field))
                .filter(|v| **v != FeatureValue::Null)
        };
        match self {
            // Kleene logic: false decides an `and`, true an `or`; else unknown spreads.
            Filter::And(parts) => Self::decide(parts, rows, false),
            Filter::Or(parts) => Self::decide(parts, rows, true),
            Filter::Not(inner) => inner.eval(rows).map(|b| !b),
            Filter::Cmp {
                field,
                op,
                value: wanted,
            } => compare(value(field)?, wanted).map(|ord| op.holds(ord)),
            Filter::In { field, values } => {
                let stored = value(field)?;
                Some(
                    values
                        .iter()
                        .any(|v| compare(stored, v).is_some_and(Ordering::is_eq)),
                )
            }
        }
    }
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Lit(Literal),
    Op(CmpOp),
    And,
    Or,
    Not,
    In,
    Open(char),
    Close(char),
    Comma,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Name(n) => write!(f, "name {n:?}"),
            Token::Lit(l) => write!(f, "value {l:?}"),
            Token::Op(op) => write!(f, "operator {op:?}"),
            Token::And => f.write_str("`and`"),
            Token::Or => f.write_str("`or`"),
            Token::Not => f.write_str("`not`"),
            Token::In => f.write_str("`in`"),
            Token::Open(c) | Token::Close(c) => write!(f, "`{c}`"),
            Token::Comma => f.write_str("`,`"),
        }
    }
}

fn syntax(col: usize, message: String) -> Error {
    Error::invalid(format!("filter does not parse at column {col}: {message}"))
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (c, col) = (chars[i], i + 1);
        let next = chars.get(i + 1).copied();
        let token = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' | '[' => Token::Open(c),
            ')' | ']' => Token::Close(c),
            ',' => Token::Comma,
            '=' if next == Some('=') => {
                i += 1;
                Token::Op(CmpOp::Eq)
            }
            '=' => Token::Op(CmpOp::Eq),
            '!' if next == Some('=') => {
                i += 1;
                Token::Op(CmpOp::Ne)
            }
            '<' | '>' => {
                let or_equal = next == Some('=');
                i += usize::from(or_equal);
                Token::Op(match (c, or_equal) {
                    ('<', false) => CmpOp::Lt,
                    ('<', true) => CmpOp::Le,
                    (_, false) => CmpOp::Gt,
                    (_, true) => CmpOp::Ge,
                })
            }
            '\'' | '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(syntax(col, "unterminated string".into())),
                        Some('\\') if matches!(chars.get(i + 1), Some(q) if *q == c || *q == '\\') =>
                        {
                            s.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(q) if *q == c => break,
                        Some(other) => {
                            s.push(*other);
                            i += 1;
                        }
                    }
                }
                Token::Lit(Literal::Str(s))
            }
            c if c.is_ascii_digit()
                || (matches!(c, '-' | '+')
                    && next.is_some_and(|n| n.is_ascii_digit() || n == '.'))
                || c == '.' =>
            {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(|d| {
                    d.is_ascii_alphanumeric()
                        || *d == '.'
                        || (matches!(d, '-' | '+') && matches!(chars[i - 1], 'e' | 'E'))
                }) {
                    i += 1;
                }
                let number: String = chars[start..i].iter().collect();
                let lit = match number.parse::<i64>() {
                    Ok(n) => Literal::Int(n),
                    Err(_) => match number.parse::<f64>() {
                        Ok(x) if x.is_finite() => Literal::Float(x),
                        _ => return Err(syntax(col, format!("{number:?} is not a number"))),
                    },
                };
                tokens.push((Token::Lit(lit), col));
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|d| d.is_ascii_alphanumeric() || matches!(d, '_' | '-' | ':'))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let token = match word.to_ascii_lowercase().as_str() {
                    "and" => Token::And,
                    "or" => Token::Or,
                    "not" => Token::Not,
                    "in" => Token::In,
                    "true" => Token::Lit(Literal::Bool(true)),
                    "false" => Token::Lit(Literal::Bool(false)),
                    _ => Token::Name(word),
                };
                tokens.push((token, col));
                continue;
            }
            other => return Err(syntax(col, format!("unexpected character {other:?}"))),
        };
        tokens.push((token, col));
        i += 1;
    }
    Ok(tokens)
}

impl Parser {
    fn peek(&self) -> Option<(&Token, usize)> {
        self.tokens.get(self.at).map(|(t, c)| (t, *c))
    }

    fn next(&mut self, wanted: &str) -> Result<(Token, usize)> {
        let end = self.tokens.last().map_or(1, |(_, c)| c + 1);
        let token = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or_else(|| syntax(end, format!("expected {wanted}, found the end")))?;
        self.at += 1;
        Ok(token)
    }

    fn eat(&mut self, token: &Token) -> bool {
        let found = self.peek().is_some_and(|(t, _)| t == token);
        self.at += usize::from(found);
        found
    }

    fn or(&mut self, depth: usize) -> Result<Filter> {
        let mut parts = vec![self.and(depth)?];
        while self.eat(&Token::Or) {
            parts.push(self.and(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::Or(parts)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Filter> {
        let mut parts = vec![self.unary(depth)?];
        while self.eat(&Token::And) {
            parts.push(self.unary(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::And(parts)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Filter> {
        if depth >= MAX_FILTER_DEPTH {
            let col = self.peek().map_or(0, |(_, c)| c);
            return Err(syntax(
                col,
                format!("nested deeper than {MAX_FILTER_DEPTH}"),
            ));
        }
        match self.next("a comparison, `not` or `(`")? {
            (Token::Not, _) => Ok(Filter::Not(Box::new(self.unary(depth + 1)?))),
            (Token::Open('('), _) => {
                let inner = self.or(depth + 1)?;
                match self.next("`)`")? {
                    (Token::Close(')'), _) => Ok(inner),
                    (token, col) => Err(syntax(col, format!("expected `)`, found {token}"))),
                }
            }
            (Token::Name(field), _) => self.comparison(field),
            (token, col) => Err(syntax(
                col,
                format!("expected a field (VIEW:FIELD), `not` or `(`, found {token}"),
            )),
        }
    }

    fn comparison(&mut self, field: String) -> Result<Filter> {
        match self.next("an operator")? {
            (Token::Op(op), _) => Ok(Filter::Cmp {
                field,
                op,
                value: self.literal()?,
            }),
            (Token::In, _) => {
                let close = match self.next("`[`")? {
                    (Token::Open('['), _) => ']',
                    (Token::Open('('), _) => ')',
                    (token, col) => {
                        return Err(syntax(
                            col,
                            format!("expected `[` after `in`, found {token}"),
                        ))
                    }
                };
                let mut values = Vec::new();
                loop {
                    values.push(self.literal()?);
                    match self.next("`,` or the closing bracket")? {
                        (Token::Comma, _) => continue,
                        (Token::Close(c), _) if c == close => break,
                        (token, col) => {
                            return Err(syntax(
                                col,
                                format!("expected `,` or `{close}`, found {token}"),
                            ))
                        }
                    }
                }
                Ok(Filter::In { field, values })
            }
            (token, col) => Err(syntax(
                col,
                format!("expected an operator after {field}, found {token}"),
            )),
        }
    }

    fn literal(&mut self) -> Result<Literal> {
        match self.next("a value")? {
            (Token::Lit(lit), _) => Ok(lit),
            (token, col) => Err(syntax(col, format!("expected a value, found {token}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FeatureField;

    fn view(name: &str, fields: &[(&str, FeatureType)], ttl_seconds: u64) -> FeatureViewSpec {
        FeatureViewSpec {
            name: name.into(),
            collection: "docs".into(),
            fields: fields
                .iter()
                .map(|(n, ty)| FeatureField {
                    name: (*n).into(),
                    ty: *ty,
                })
                .collect(),
            ttl_seconds,
            history_seconds: 0,
        }
    }

    fn ts(text: &str) -> Result<i64> {
        match text {
            "2026-01-01T00:00:00Z" => Ok(1_767_225_600_000_000),
            _ => Err(Error::invalid(format!("bad timestamp {text:?}"))),
        }
    }

    fn resolve(text: &str) -> Result<ResolvedFilter> {
        let stats = view(
            "stats",
            &[
                ("rating", FeatureType::Double),
                ("trips", FeatureType::Int64),
                ("city", FeatureType::String),
                ("banned", FeatureType::Bool),
                ("seen", FeatureType::Timestamp),
                ("embedding", FeatureType::FloatList),
            ],
            60,
        );
        let extra = view(
            "extra",
            &[("city", FeatureType::String), ("tier", FeatureType::Int64)],
            0,
        );
        Filter::parse(text)?.resolve(&[(7, &stats), (9, &extra)], &ts)
    }

    #[test]
    fn parses_precedence_not_binds_tighter_than_and_than_or() {
        let f = Filter::parse("a:x = 1 or not a:y < 2.5 and a:z in ['p', \"q\\\"\"]").unwrap();
        let cmp = |field: &str, op, value| Filter::Cmp {
            field: field.into(),
            op,
            value,
        };
        assert_eq!(
            f,
            Filter::Or(vec![
                cmp("a:x", CmpOp::Eq, Literal::Int(1)),
                Filter::And(vec![
                    Filter::Not(Box::new(cmp("a:y", CmpOp::Lt, Literal::Float(2.5)))),
                    Filter::In {
                        field: "a:z".into(),
                        values: vec![Literal::Str("p".into()), Literal::Str("q\"".into())],
                    },
                ]),
            ])
        );
        assert_eq!(
            Filter::parse("(a:x >= -3 OR a:x != 1e3) AND a:b == TRUE").unwrap(),
            Filter::And(vec![
                Filter::Or(vec![
                    cmp("a:x", CmpOp::Ge, Literal::Int(-3)),
                    cmp("a:x", CmpOp::Ne, Literal::Float(1000.0)),
                ]),
                cmp("a:b", CmpOp::Eq, Literal::Bool(true)),
            ])
        );
    }

    #[test]
    fn bad_text_is_refused_with_its_column() {
        for (text, wanted) in [
            ("", "found the end"),
            ("stats:rating >", "expected a value"),
            ("stats:rating 4", "expected an operator"),
            ("(stats:rating > 4", "expected `)`"),
            ("stats:rating > 4 stats:trips < 2", "unexpected name"),
            ("stats:city = 'Oslo", "unterminated string"),
            ("stats:rating > 4 & x", "unexpected character '&'"),
            ("stats:trips in [1, 2", "found the end"),
            ("stats:trips in 1", "expected `[`"),
            ("stats:rating > 1e999", "is not a number"),
            ("and", "expected a field"),
        ] {
            let err = Filter::parse(text).unwrap_err();
            assert!(err.message.contains(wanted), "{text:?}: {}", err.message);
            assert!(
                err.message.starts_with("filter"),
                "{text:?}: {}",
                err.message
            );
        }
        assert_eq!(
            Filter::parse("a:x = 1 or not (y in [1] and a:x < 2)")
                .unwrap()
                .fields(),
            vec!["a:x", "y", "a:x"]
        );
        let deep = format!("{}a:x = 1{}", "(".repeat(40), ")".repeat(40));
        assert!(Filter::parse(&deep)
            .unwrap_err()
            .message
            .contains("nested deeper"));
        assert!(Filter::parse(&"x".repeat(MAX_FILTER_LEN + 1)).is_err());
    }

    #[test]
    fn resolving_checks_views_fields_and_types() {
        for (text, wanted) in [
            ("nope:rating > 1", "not a feature view"),
            ("stats:nope > 1", "has no field"),
            ("nope > 1", "no feature view of this collection has a field"),
            ("city = 'Oslo'", "is in views"),
            ("stats:banned < true", "compare it with = or !="),
            ("stats:rating = 'high'", "not a double value"),
            ("stats:trips = true", "not a int64 value"),
            ("stats:seen > 'yesterday'", "bad timestamp"),
            ("stats:embedding = 1", "filters cannot compare"),
        ] {
            let err = resolve(text).unwrap_err();
            assert!(err.message.contains(wanted), "{text:?}: {}", err.message);
        }
        let ok = resolve("trips > 2.5 and extra:tier = 1 and stats:seen >= '2026-01-01T00:00:00Z'")
            .unwrap();
        assert_eq!(
            ok.views,
            vec![
                FilterView {
                    id: 7,
                    ttl_micros: 60_000_000
                },
                FilterView {
                    id: 9,
                    ttl_micros: 0
                }
            ]
        );
    }

    #[test]
    fn integers_compare_with_decimals_exactly() {
        use Ordering::*;
        for (a, b, wanted) in [
            (3, 3.5, Less),
            (3, 3.0, Equal),
            (0, -0.5, Greater),
            (-1, -0.5, Less),
            (9_007_199_254_740_993, 9_007_199_254_740_992.0, Greater),
            (i64::MAX, 9_223_372_036_854_775_808.0, Less),
            (i64::MIN, -9_223_372_036_854_775_808.0, Equal),
            (i64::MIN, -1e19, Greater),
        ] {
            assert_eq!(compare_int_with_float(a, b), Some(wanted), "{a} vs {b}");
        }
        assert_eq!(compare_int_with_float(1, f64::NAN), None);
    }

    #[test]
    fn evaluation_follows_sql_three_valued_logic() {
        use FeatureValue as V;
        let stats = [
            V::Double(4.5),
            V::Int64(3),
            V::String("Oslo".into()),
            V::Bool(false),
            V::Timestamp(1_767_225_600_000_001),
            V::Null,
        ];
        let with_null_city = [
            V::Double(4.5),
            V::Int64(3),
            V::Null,
            V::Bool(false),
            V::Timestamp(0),
            V::Null,
        ];
        // `rows`: the point's rows in views 7 (stats) and 9 (extra), in the filter's order.
        let eval = |text: &str, rows: [Option<&[FeatureValue]>; 2]| {
            let filter = resolve(text).unwrap();
            let ordered: Vec<Option<&[FeatureValue]>> = filter
                .views
                .iter()
                .map(|v| if v.id == 7 { rows[0] } else { rows[1] })
                .collect();
            filter.expr.eval(&ordered)
        };
        let full = [Some(&stats[..]), None];
        for (text, wanted) in [
            ("stats:rating >= 4.5", Some(true)),
            ("stats:rating > 4.5", Some(false)),
            ("trips = 3 and stats:city in ['Bergen', 'Oslo']", Some(true)),
            ("trips > 2.9", Some(true)),
            ("not stats:banned = true", Some(true)),
            ("stats:seen > '2026-01-01T00:00:00Z'", Some(true)),
            // No row in view `extra`: unknown, and unknown stays unknown under `not`.
            ("extra:tier = 1", None),
            ("not extra:tier = 1", None),
            ("extra:tier = 1 or trips = 3", Some(true)),
            ("extra:tier = 1 and trips = 4", Some(false)),
            ("extra:tier = 1 and trips = 3", None),
        ] {
            assert_eq!(eval(text, full), wanted, "{text}");
        }
        let nulls = [Some(&with_null_city[..]), None];
        assert_eq!(eval("stats:city != 'Oslo'", nulls), None);
        assert_eq!(eval("stats:city in ['Oslo']", nulls), None);
        assert_eq!(eval("stats:rating < 5", [None, None]), None);
    }
}
