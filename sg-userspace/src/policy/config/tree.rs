//! A TOML document read as a generic tree of values that keep their byte spans.
//!
//! Why not deserialize straight into structs with `#[serde(deny_unknown_fields)]`: serde
//! stops at the first unknown field or wrong type, and a rule file should report every
//! problem at once. So the document is read generically, and the validator walks the tree
//! with [`Table`], which reports unknown fields and wrong types and carries on.

use std::borrow::Cow;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{Checked, Diagnostics};

/// A byte range in the rule file.
pub(crate) type Span = Range<usize>;

/// A TOML value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node<'t> {
    /// Borrowed from the file's text unless it had escapes.
    String(Cow<'t, str>),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Located<'t>>),
    /// Entries in document order.
    Table(Vec<Entry<'t>>),
}

impl Node<'_> {
    /// The TOML type name, for "expected a string, found an integer" messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Node::String(_) => "a string",
            Node::Integer(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Boolean(_) => "a boolean",
            Node::Datetime(_) => "a datetime",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
        }
    }
}

/// A value and, when toml knows it, its byte span.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Located<'t> {
    pub(crate) node: Node<'t>,
    pub(crate) span: Option<Span>,
}

/// A `key = value` pair of a table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry<'t> {
    pub(crate) key: Cow<'t, str>,
    pub(crate) key_span: Option<Span>,
    pub(crate) value: Located<'t>,
}

/// Parses TOML text into a tree. Fails only on TOML syntax errors (and on integers
/// beyond 64 bits, which no field takes).
///
/// Why toml's `DeTable` and not `toml::from_str` into a serde visitor: `DeTable` is
/// toml's parse-only tree, spans on every key and value, strings borrowed from the text,
/// and builds in about half the time of the serde path (a 16,384-rule file of 3 MB:
/// ~90 ms against ~200 ms), which is most of what `sgctl apply` spends on a large file.
pub(crate) fn parse(text: &str) -> Result<Located<'_>, SyntaxError> {
    let root = DeTable::parse(text).map_err(|e| SyntaxError { span: e.span(), message: e.message().to_string() })?;
    let span = root.span();
    let node = table(root.into_inner())?;
    Ok(Located { node, span: known(span) })
}

/// toml gives values it made up (the tables that dotted keys and `[a.b]` headers imply)
/// an empty span; they take their enclosing value's span instead.
fn known(span: Span) -> Option<Span> {
    (!span.is_empty()).then_some(span)
}

/// Why a rule file is not TOML, and where.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub(crate) span: Option<Span>,
    pub(crate) message: String,
}

fn table(entries: DeTable<'_>) -> Result<Node<'_>, SyntaxError> {
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let key_span = known(key.span());
        out.push(Entry { key: key.into_inner(), key_span, value: located(value)? });
    }
    Ok(Node::Table(out))
}

fn located(value: Spanned<DeValue<'_>>) -> Result<Located<'_>, SyntaxError> {
    let span = value.span();
    let node = match value.into_inner() {
        DeValue::String(s) => Node::String(s),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(v) => Node::Integer(v),
            Err(_) => return Err(SyntaxError { span: Some(span), message: "integer out of range".to_string() }),
        },
        // toml has checked the syntax and removed underscores; Rust reads `inf` and `nan`.
        DeValue::Float(f) => Node::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Node::Boolean(b),
        DeValue::Datetime(d) => Node::Datetime(d.to_string()),
        DeValue::Array(items) => Node::Array(items.into_iter().map(located).collect::<Result<_, _>>()?),
        DeValue::Table(entries) => table(entries)?,
    };
    Ok(Located { node, span: known(span) })
}

impl Located<'_> {
    /// The value's span, or `fallback` when toml did not record one.
    pub(crate) fn span_or(&self, fallback: &Span) -> Span {
        self.span.clone().unwrap_or_else(|| fallback.clone())
    }
}

/// A value read from the file, with where it was written and its field path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
    /// E.g. `security_group[1].rule[2].port_range`.
    pub(crate) path: String,
}

impl<T> Field<T> {
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Field<U> {
        Field { value: f(self.value), span: self.span, path: self.path }
    }
}

/// A table of the document being validated. Unknown keys are reported when it is opened;
/// the typed getters report wrong types and return `None` for them, so callers use
/// [`Table::has`] to tell "absent" from "present but unusable".
pub(crate) struct Table<'a> {
    path: String,
    span: Span,
    entries: &'a [Entry<'a>],
}

impl<'a> Table<'a> {
    /// Opens `value` as a table at `path`, reporting keys not in `allowed`.
    pub(crate) fn open(
        diag: &mut Diagnostics<'_>,
        value: &'a Located<'a>,
        path: String,
        fallback_span: &Span,
        allowed: &[&str],
    ) -> Checked<Self> {
        let span = value.span_or(fallback_span);
        let Node::Table(entries) = &value.node else {
            return Err(diag.report(&span, path, format!("expected a table, found {}", value.node.type_name())));
        };
        let table = Table { path, span, entries };
        table.report_unknown_keys(diag, allowed);
        Ok(table)
    }

    fn report_unknown_keys(&self, diag: &mut Diagnostics<'_>, allowed: &[&str]) {
        for entry in self.entries {
            if !allowed.contains(&entry.key.as_ref()) {
                let span = entry.key_span.clone().unwrap_or_else(|| self.span.clone());
                diag.report(
                    &span,
                    self.field_path(&entry.key),
                    format!("unknown field `{}`; expected one of: {}", entry.key, allowed.join(", ")),
                );
            }
        }
    }

    /// The span of the table itself (its `[header]` for tables written with one).
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// `path.key`, or `key` for the document root.
    pub(crate) fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) }
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.entry(key).is_some()
    }

    fn entry(&self, key: &str) -> Option<&'a Entry<'a>> {
        self.entries.iter().find(|entry| entry.key == key)
    }

    /// The raw value of `key`, with its span (falling back to the key's, then the
    /// table's) and field path.
    pub(crate) fn get(&self, key: &str) -> Option<Field<&'a Located<'a>>> {
        let entry = self.entry(key)?;
        let fallback = entry.key_span.clone().unwrap_or_else(|| self.span.clone());
        Some(Field { value: &entry.value, span: entry.value.span_or(&fallback), path: self.field_path(key) })
    }

    /// A string value; `None` when absent or not a string (reported).
    pub(crate) fn string(&self, diag: &mut Diagnostics<'_>, key: &str) -> Option<Field<&'a str>> {
        let field = self.get(key)?;
        as_string(diag, field)
    }

    /// An integer value; `None` when absent or not an integer (reported).
    pub(crate) fn integer(&self, diag: &mut Diagnostics<'_>, key: &str) -> Option<Field<i64>> {
        let field = self.get(key)?;
        match field.value.node {
            Node::Integer(v) => Some(field.map(|_| v)),
            ref other => {
                let message = format!("expected an integer, found {}", other.type_name());
                diag.report(&field.span, field.path, message);
                None
            }
        }
    }

    /// An array of strings. Items that are not strings are reported and left out. The
    /// outer `Field` carries the span of the whole array.
    pub(crate) fn string_array(&self, diag: &mut Diagnostics<'_>, key: &str) -> Option<Field<Vec<Field<&'a str>>>> {
        let field = self.get(key)?;
        let Node::Array(items) = &field.value.node else {
            let message = format!("expected an array of strings, found {}", field.value.node.type_name());
            diag.report(&field.span, field.path, message);
            return None;
        };
        let strings = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let item_field =
                    Field { value: item, span: item.span_or(&field.span), path: format!("{}[{}]", field.path, i + 1) };
                as_string(diag, item_field)
            })
            .collect();
        Some(Field { value: strings, span: field.span, path: field.path })
    }

    /// An array of tables (`[[key]]`), each opened with `allowed` keys. Items are named
    /// `key[1]`, `key[2]`, ... in file order.
    pub(crate) fn tables(&self, diag: &mut Diagnostics<'_>, key: &str, allowed: &[&str]) -> Vec<Table<'a>> {
        let Some(field) = self.get(key) else {
            return Vec::new();
        };
        let Node::Array(items) = &field.value.node else {
            let message =
                format!("expected an array of tables (write [[{key}]]), found {}", field.value.node.type_name());
            diag.report(&field.span, field.path, message);
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let path = format!("{}[{}]", field.path, i + 1);
                Table::open(diag, item, path, &field.span, allowed).ok()
            })
            .collect()
    }
}

fn as_string<'a>(diag: &mut Diagnostics<'_>, field: Field<&'a Located<'a>>) -> Option<Field<&'a str>> {
    match &field.value.node {
        Node::String(s) => Some(Field { value: s.as_ref(), span: field.span, path: field.path }),
        other => {
            let message = format!("expected a string, found {}", other.type_name());
            diag.report(&field.span, field.path, message);
            None
        }
    }
}
