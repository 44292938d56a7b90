//! Validation errors and the collector that turns byte spans into line/column positions.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// One problem found in a rule file.
///
/// `line` and `column` are 1-based (columns count characters, not bytes). They are 0 only
/// for problems that have no position, such as a file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Where the value lives, e.g. `security_group[1].rule[2].port_range` (1-based
    /// positions in file order). Empty for syntax errors.
    pub field: String,
    /// The offending value as written in the file (TOML source text, so strings keep their
    /// quotes). Empty when the field is missing.
    pub value: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `FILE:LINE:COL: FIELD = VALUE: MESSAGE`, the shape compilers use, so editors can jump
    /// to the position.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file, self.message);
        }
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            let value = if self.value.is_empty() { "<missing>" } else { &self.value };
            write!(f, "{} = {}: ", self.field, value)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a rule file, sorted by position. Nothing of a file with errors is
/// applied, so reporting all of them at once saves the operator round trips.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// An error that concerns the whole file (unreadable, not UTF-8, ...).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        ConfigErrors {
            errors: vec![ConfigError {
                file: file.to_string(),
                line: 0,
                column: 0,
                field: String::new(),
                value: String::new(),
                message: message.into(),
            }],
        }
    }
}

/// Marker: an error has already been recorded in the [`Diagnostics`]; the caller only
/// needs to know the value is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reported;

/// The result of checking one value: either the value, or "already reported".
pub(crate) type Checked<T> = Result<T, Reported>;

/// Longest value excerpt quoted in a message; longer values (big arrays) are cut.
const MAX_VALUE_CHARS: usize = 80;

/// Collects errors while a file is validated.
pub(crate) struct Diagnostics<'t> {
    file: String,
    text: &'t str,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl<'t> Diagnostics<'t> {
    pub(crate) fn new(file: &str, text: &'t str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Diagnostics { file: file.to_string(), text, line_starts, errors: Vec::new() }
    }

    /// Records a problem with the value written at `span`, and returns the marker so
    /// callers can write `return Err(diag.report(..))`.
    pub(crate) fn report(
        &mut self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Reported {
        let value = self.excerpt(span);
        self.push(span.start, field.into(), value, message.into())
    }

    /// Records a missing field; `span` is where it should have been (its table).
    pub(crate) fn report_missing(
        &mut self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Reported {
        self.push(span.start, field.into(), String::new(), message.into())
    }

    /// Records a syntax error reported by the TOML parser.
    pub(crate) fn report_syntax(&mut self, offset: Option<usize>, message: &str) -> Reported {
        // toml's messages span several lines; keep one error per line.
        let message = message.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(": ");
        match offset {
            Some(offset) => self.push(offset, String::new(), String::new(), message),
            None => {
                self.errors.push(ConfigError {
                    file: self.file.clone(),
                    line: 0,
                    column: 0,
                    field: String::new(),
                    value: String::new(),
                    message,
                });
                Reported
            }
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.position(offset).0
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The collected errors, ordered by position (stable, so errors at one position keep
    /// the order in which they were found).
    pub(crate) fn into_errors(self) -> ConfigErrors {
        let mut errors = self.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors { errors }
    }

    fn push(&mut self, offset: usize, field: String, value: String, message: String) -> Reported {
        let (line, column) = self.position(offset);
        self.errors.push(ConfigError { file: self.file.clone(), line, column, field, value, message });
        Reported
    }

    /// 1-based (line, column) of a byte offset; the column counts characters.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line_index = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let line_start = self.line_starts[line_index];
        let column = self.text.get(line_start..offset).map_or(offset - line_start, |prefix| prefix.chars().count());
        (line_index + 1, column + 1)
    }

    /// The source text of a value, on one line and cut to a readable length.
    fn excerpt(&self, span: &Range<usize>) -> String {
        let raw = self.text.get(span.clone()).unwrap_or_default();
        let one_line =
            if raw.contains('\n') { raw.split_whitespace().collect::<Vec<_>>().join(" ") } else { raw.to_string() };
        if one_line.chars().count() <= MAX_VALUE_CHARS {
            one_line
        } else {
            let cut: String = one_line.chars().take(MAX_VALUE_CHARS).collect();
            format!("{cut}...")
        }
    }
}
