//! Splitting a builder's output into log lines (CppNix's `handleChildOutput`/`flushLine`).
//!
//! * `\n` ends a line; `\r` moves back to the start of the current line, so the next
//!   characters overwrite it (progress bars end up as their last state);
//! * a line `@nix <json>` whose JSON parses is a structured log message (activities,
//!   results, messages of a builder that speaks Nix's JSON logger protocol): it is handed
//!   to the caller as such and kept out of the failure tail; anything else is a text line;
//! * the last `log-lines` text lines are kept for the failure message;
//! * a line longer than [`MAX_LINE`] is cut into pieces of that size, so a builder that
//!   never writes a newline cannot make us allocate without bound;
//! * at end of output an unfinished line is flushed.

use std::collections::VecDeque;

/// Longest line kept in memory before it is emitted in pieces.
pub const MAX_LINE: usize = 1 << 20;

/// What a finished line is.
#[derive(Debug, PartialEq, Eq)]
pub enum LogLine<'a> {
    /// Ordinary output, without the newline.
    Text(&'a [u8]),
    /// The JSON text after `@nix `.
    Structured(&'a str),
}

/// The line splitter and the tail kept for failure messages.
#[derive(Debug)]
pub struct LogSplitter {
    line: Vec<u8>,
    pos: usize,
    tail: VecDeque<String>,
    tail_lines: usize,
}

impl LogSplitter {
    /// A splitter keeping the last `tail_lines` text lines.
    pub fn new(tail_lines: usize) -> Self {
        LogSplitter {
            line: Vec::new(),
            pos: 0,
            tail: VecDeque::new(),
            tail_lines,
        }
    }

    /// Feeds output bytes; `sink` is called for each finished line.
    pub fn feed(&mut self, data: &[u8], sink: &mut dyn FnMut(LogLine<'_>)) {
        for &c in data {
            match c {
                b'\r' => self.pos = 0,
                b'\n' => self.flush(sink),
                _ => {
                    if self.pos >= MAX_LINE {
                        self.flush(sink);
                    }
                    if self.pos < self.line.len() {
                        if let Some(slot) = self.line.get_mut(self.pos) {
                            *slot = c;
                        }
                    } else {
                        self.line.push(c);
                    }
                    self.pos += 1;
                }
            }
        }
    }

    /// Flushes an unfinished line (end of output).
    pub fn finish(&mut self, sink: &mut dyn FnMut(LogLine<'_>)) {
        if !self.line.is_empty() {
            self.flush(sink);
        }
    }

    fn flush(&mut self, sink: &mut dyn FnMut(LogLine<'_>)) {
        let line = std::mem::take(&mut self.line);
        self.pos = 0;
        if let Some(json) = structured(&line) {
            sink(LogLine::Structured(json));
        } else {
            if self.tail_lines > 0 {
                if self.tail.len() >= self.tail_lines {
                    self.tail.pop_front();
                }
                self.tail
                    .push_back(String::from_utf8_lossy(&line).into_owned());
            }
            sink(LogLine::Text(&line));
        }
        // Reuse the allocation for the next line.
        self.line = line;
        self.line.clear();
    }

    /// The last text lines (oldest first).
    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }

    pub fn tail_len(&self) -> usize {
        self.tail.len()
    }
}

/// `@nix <json>` with valid JSON → the JSON text.
fn structured(line: &[u8]) -> Option<&str> {
    let rest = line.strip_prefix(b"@nix ")?;
    let text = std::str::from_utf8(rest).ok()?;
    serde_json::from_str::<serde_json::Value>(text).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], tail: usize) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut s = LogSplitter::new(tail);
        let mut text = Vec::new();
        let mut json = Vec::new();
        let mut sink = |l: LogLine<'_>| match l {
            LogLine::Text(t) => text.push(String::from_utf8_lossy(t).into_owned()),
            LogLine::Structured(j) => json.push(j.to_owned()),
        };
        for c in chunks {
            s.feed(c, &mut sink);
        }
        s.finish(&mut sink);
        let t = s.tail().map(str::to_owned).collect();
        (text, json, t)
    }

    #[test]
    fn lines_carriage_returns_and_chunk_boundaries() {
        let (text, json, _) = split(
            &[b"hel", b"lo\nwor", b"ld\n", b"10%\r50%\r100%\n", b"tail"],
            10,
        );
        assert_eq!(text, ["hello", "world", "100%", "tail"]);
        assert!(json.is_empty());
        // \r then a shorter text keeps the rest of the old line, as CppNix does.
        let (text, _, _) = split(&[b"abcdef\rXY\n"], 10);
        assert_eq!(text, ["XYcdef"]);
        let (text, _, _) = split(&[b"\n\n"], 10);
        assert_eq!(text, ["", ""]);
    }

    #[test]
    fn structured_messages_are_separate() {
        let (text, json, tail) = split(
            &[b"@nix {\"action\":\"msg\",\"level\":0,\"msg\":\"hi\"}\n@nix not json\nplain\n"],
            10,
        );
        assert_eq!(json, [r#"{"action":"msg","level":0,"msg":"hi"}"#]);
        assert_eq!(text, ["@nix not json", "plain"]);
        assert_eq!(tail, ["@nix not json", "plain"]);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let data: String = (1..=25).map(|i| format!("line {i}\n")).collect();
        let (_, _, tail) = split(&[data.as_bytes()], 10);
        assert_eq!(tail.len(), 10);
        assert_eq!(tail[0], "line 16");
        assert_eq!(tail[9], "line 25");
    }

    #[test]
    fn endless_lines_are_bounded() {
        let big = vec![b'x'; MAX_LINE * 2 + 5];
        let (text, _, _) = split(&[&big], 3);
        assert_eq!(text.len(), 3);
        assert_eq!(text[0].len(), MAX_LINE);
        assert_eq!(text[2].len(), 5);
    }
}
