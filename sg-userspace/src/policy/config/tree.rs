//! A TOML document read as a generic tree of values that keep their byte spans.
//!
//! Why not deserialize straight into structs with `#[serde(deny_unknown_fields)]`: serde
//! stops at the first unknown field or wrong type, and a rule file should report every
//! problem at once. So the document is read generically, and the validator walks the tree
//! with [`Table`], which reports unknown fields and wrong types and carries on.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::error::{Checked, Diagnostics};

/// A byte range in the rule file.
pub(crate) type Span = Range<usize>;

// `toml::Spanned` asks the deserializer for a struct with these private names and receives
// the span as a three-entry map. We speak the same protocol instead of using
// `toml::Spanned<T>` directly because `Spanned` fails outright on the few values toml has
// no span for (dotted keys such as `sessions.icmp = 5`, implicit tables), while we only
// want to fall back to the enclosing span there. The names are those of serde_spanned 0.6,
// which toml 0.8 is pinned to; `config::tests::positions_*` fail if they ever change.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: [&str; 3] = [SPANNED_START, SPANNED_END, SPANNED_VALUE];
/// toml hands datetimes to `deserialize_any` callers as a one-entry map with this key.
const DATETIME_KEY: &str = "$__toml_private_datetime";

/// A TOML value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Located>),
    /// Entries in document order.
    Table(Vec<Entry>),
}

impl Node {
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
pub(crate) struct Located {
    pub(crate) node: Node,
    pub(crate) span: Option<Span>,
}

/// A `key = value` pair of a table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_span: Option<Span>,
    pub(crate) value: Located,
}

/// Parses TOML text into a tree. Fails only on TOML syntax errors.
pub(crate) fn parse(text: &str) -> Result<Located, toml::de::Error> {
    toml::from_str(text)
}

impl Located {
    fn bare(node: Node) -> Self {
        Located { node, span: None }
    }

    /// The value's span, or `fallback` when toml did not record one.
    pub(crate) fn span_or(&self, fallback: &Span) -> Span {
        self.span.clone().unwrap_or_else(|| fallback.clone())
    }
}

impl<'de> Deserialize<'de> for Located {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, &SPANNED_FIELDS, LocatedVisitor)
    }
}

/// The value inside a span wrapper. It must be read with `deserialize_any`: asking for a
/// span again would return the same wrapper forever.
struct Bare(Located);

impl<'de> Deserialize<'de> for Bare {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LocatedVisitor).map(Bare)
    }
}

struct LocatedVisitor;

impl<'de> Visitor<'de> for LocatedVisitor {
    type Value = Located;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Located, E> {
        Ok(Located::bare(Node::Boolean(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Located, E> {
        Ok(Located::bare(Node::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Located, E> {
        i64::try_from(v).map(|v| Located::bare(Node::Integer(v))).map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Located, E> {
        Ok(Located::bare(Node::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Located, E> {
        Ok(Located::bare(Node::String(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Located, E> {
        Ok(Located::bare(Node::String(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Located, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Located>()? {
            items.push(item);
        }
        Ok(Located::bare(Node::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located, A::Error> {
        let Some(first) = map.next_key::<Key>()? else {
            return Ok(Located::bare(Node::Table(Vec::new())));
        };
        match first.name.as_str() {
            SPANNED_START => read_span_wrapper(map),
            DATETIME_KEY => Ok(Located::bare(Node::Datetime(map.next_value()?))),
            _ => read_table(first, map),
        }
    }
}

/// Reads the rest of a span wrapper (`start` was just read as the first key).
fn read_span_wrapper<'de, A: MapAccess<'de>>(mut map: A) -> Result<Located, A::Error> {
    let start: usize = map.next_value()?;
    expect_key(&mut map, SPANNED_END)?;
    let end: usize = map.next_value()?;
    expect_key(&mut map, SPANNED_VALUE)?;
    let Bare(mut inner) = map.next_value()?;
    inner.span = Some(start..end);
    Ok(inner)
}

fn expect_key<'de, A: MapAccess<'de>>(map: &mut A, expected: &str) -> Result<(), A::Error> {
    match map.next_key::<Key>()? {
        Some(key) if key.name == expected => Ok(()),
        _ => Err(de::Error::custom("malformed span information from toml")),
    }
}

/// Reads a table whose first key has already been read.
fn read_table<'de, A: MapAccess<'de>>(first: Key, mut map: A) -> Result<Located, A::Error> {
    let mut entries = Vec::new();
    let mut key = first;
    loop {
        let value: Located = map.next_value()?;
        entries.push(Entry { key: key.name, key_span: key.span, value });
        match map.next_key::<Key>()? {
            Some(next) => key = next,
            None => break,
        }
    }
    Ok(Located::bare(Node::Table(entries)))
}

/// A table key and, when toml knows it, its span.
struct Key {
    name: String,
    span: Option<Span>,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, &SPANNED_FIELDS, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key { name: v.to_string(), span: None })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        expect_key(&mut map, SPANNED_START)?;
        let start: usize = map.next_value()?;
        expect_key(&mut map, SPANNED_END)?;
        let end: usize = map.next_value()?;
        expect_key(&mut map, SPANNED_VALUE)?;
        let name: String = map.next_value()?;
        Ok(Key { name, span: Some(start..end) })
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
    entries: &'a [Entry],
}

impl<'a> Table<'a> {
    /// Opens `value` as a table at `path`, reporting keys not in `allowed`.
    pub(crate) fn open(
        diag: &mut Diagnostics<'_>,
        value: &'a Located,
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
            if !allowed.contains(&entry.key.as_str()) {
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

    fn entry(&self, key: &str) -> Option<&'a Entry> {
        self.entries.iter().find(|entry| entry.key == key)
    }

    /// The raw value of `key`, with its span (falling back to the key's, then the
    /// table's) and field path.
    pub(crate) fn get(&self, key: &str) -> Option<Field<&'a Located>> {
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

fn as_string<'a>(diag: &mut Diagnostics<'_>, field: Field<&'a Located>) -> Option<Field<&'a str>> {
    match &field.value.node {
        Node::String(s) => Some(Field { value: s.as_str(), span: field.span, path: field.path }),
        other => {
            let message = format!("expected a string, found {}", other.type_name());
            diag.report(&field.span, field.path, message);
            None
        }
    }
}
