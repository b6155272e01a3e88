//! Where each key and value of a YAML document stands (line and column), so
//! that checks made after deserialization can still point at the text.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Positions of every key and value, by dotted path (`emission.require[1]`).
#[derive(Debug, Default)]
pub struct Locations {
    keys: HashMap<String, Position>,
    values: HashMap<String, Position>,
}

impl Locations {
    /// Reads the positions of a YAML text; a text that does not parse gives no positions
    /// (serde reports its syntax error with a position of its own).
    pub fn of(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return builder.locations;
        }
        builder.locations
    }

    /// Where the key at `path` is written, or failing that its value, or the
    /// closest parent that is written.
    pub fn key(&self, path: &str) -> Position {
        self.lookup(path, true)
    }

    /// Where the value at `path` is written, or failing that the closest parent.
    pub fn value(&self, path: &str) -> Position {
        self.lookup(path, false)
    }

    fn lookup(&self, path: &str, key_first: bool) -> Position {
        let mut path = path.to_string();
        loop {
            let (first, second) = if key_first {
                (&self.keys, &self.values)
            } else {
                (&self.values, &self.keys)
            };
            if let Some(pos) = first.get(&path).or_else(|| second.get(&path)) {
                return *pos;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path.truncate(cut),
                None => return Position { line: 1, column: 1 },
            }
        }
    }
}

enum Frame {
    Map {
        path: String,
        pending_key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    locations: Locations,
    stack: Vec<Frame>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn position(mark: Marker) -> Position {
    Position {
        line: mark.line().max(1),
        column: mark.col() + 1,
    }
}

impl Builder {
    /// The path of the node that starts now, consuming the pending key or sequence slot.
    /// Returns `None` when the node is a mapping key.
    fn next_path(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, pending_key }) => match pending_key.take() {
                Some(key) => Some(join(path, &key)),
                None => {
                    let key = scalar.unwrap_or("?").to_string();
                    let full = join(path, &key);
                    self.locations.keys.insert(full, position(mark));
                    *pending_key = Some(key);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(path) = self.next_path(Some(&value), mark) {
                    self.locations.values.insert(path, position(mark));
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.next_path(None, mark) {
                    self.locations.values.insert(path, position(mark));
                }
            }
            Event::MappingStart(..) => {
                let path = self.next_path(None, mark).unwrap_or_default();
                self.locations.values.insert(path.clone(), position(mark));
                self.stack.push(Frame::Map {
                    path,
                    pending_key: None,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.next_path(None, mark).unwrap_or_default();
                self.locations.values.insert(path.clone(), position(mark));
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name: x\nemission:\n  type: smart\n  require: [plan, user_id]\nstate:\n  dimensions:\n    - profiles\n";

    #[test]
    fn finds_keys_and_values() {
        let loc = Locations::of(DOC);
        assert_eq!(loc.key("name"), Position { line: 1, column: 1 });
        assert_eq!(loc.value("name"), Position { line: 1, column: 7 });
        assert_eq!(loc.key("emission.type"), Position { line: 3, column: 3 });
        assert_eq!(
            loc.value("emission.require[1]"),
            Position {
                line: 4,
                column: 19
            }
        );
        assert_eq!(
            loc.value("state.dimensions[0]"),
            Position { line: 7, column: 7 }
        );
    }

    #[test]
    fn falls_back_to_the_closest_parent() {
        let loc = Locations::of(DOC);
        assert_eq!(loc.key("emission.timeout"), Position { line: 2, column: 1 });
        assert_eq!(loc.key("nowhere"), Position { line: 1, column: 1 });
    }
}
