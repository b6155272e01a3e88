//! A problem found in a pipeline or config file, located at a line and column.

use std::fmt;
use std::path::{Path, PathBuf};

use super::locate::Position;

/// One problem in a file: where, what was found, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line and column.
    pub position: Position,
    /// What is wrong, naming the value found.
    pub message: String,
    /// What is allowed, or what to do.
    pub help: Option<String>,
    /// A warning (the file loads; something in it is ignored), not an error.
    pub warning: bool,
}

impl Diagnostic {
    /// A problem at `position` in `file`.
    pub fn new(file: &Path, position: Position, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            position,
            message: message.into(),
            help: None,
            warning: false,
        }
    }

    /// Makes it a warning: the file loads, and this says what is ignored.
    pub fn as_warning(mut self) -> Self {
        self.warning = true;
        self
    }

    /// Adds what to do about it.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.position.line,
            self.position.column,
            if self.warning { "warning" } else { "error" },
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in one pass over a file, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Adds a problem.
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sorts by position so the report reads top to bottom.
    pub fn sort(&mut self) {
        self.0
            .sort_by_key(|d| (d.file.clone(), d.position.line, d.position.column));
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_column_and_help() {
        let d = Diagnostic::new(Path::new("p.yaml"), Position { line: 3, column: 5 }, "bad")
            .with_help("do this");
        assert_eq!(d.to_string(), "p.yaml:3:5: error: bad\n  help: do this");
    }
}
