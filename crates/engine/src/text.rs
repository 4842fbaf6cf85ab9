//! Incremental detokenisation: bytes of tokens in, text out, holding back incomplete UTF-8
//! sequences and anything that might be the start of a stop string.

/// Accumulates the bytes of generated tokens and decides what text may be shown so far.
pub struct TextStream {
    stops: Vec<String>,
    text: String,
    /// `text.chars().count()`, kept as text is added so that offsets cost no rescan.
    chars: usize,
    pending: Vec<u8>,
    emitted: usize,
    stopped: bool,
}

impl TextStream {
    pub fn new(stops: &[String]) -> TextStream {
        TextStream {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            chars: 0,
            pending: Vec::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Characters of complete text so far (the `text_offset` of the next token).
    pub fn char_len(&self) -> usize {
        self.chars
    }

    /// Adds a token's bytes. Returns true when a stop string has appeared; the text is then
    /// cut just before it.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if self.stopped {
            return true;
        }
        self.pending.extend_from_slice(bytes);
        let before = self.text.len();
        self.chars += decode_utf8_prefix(&mut self.pending, &mut self.text, false);
        self.check_stop(before)
    }

    fn check_stop(&mut self, before: usize) -> bool {
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = before.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.chars -= self.text[at..].chars().count();
            self.text.truncate(at);
            self.pending.clear();
            self.stopped = true;
        }
        self.stopped
    }

    /// Text that can be shown now: complete characters that cannot become part of a stop string.
    pub fn take_ready(&mut self) -> &str {
        let mut end = self.text.len();
        if !self.stopped {
            // Hold back the longest tail that is a prefix of some stop string.
            let held = self
                .stops
                .iter()
                .map(|s| {
                    (1..s.len().min(self.text.len() - self.emitted) + 1)
                        .rev()
                        .find(|&k| {
                            self.text.is_char_boundary(self.text.len() - k)
                                && s.as_bytes()
                                    .starts_with(&self.text.as_bytes()[self.text.len() - k..])
                        })
                        .unwrap_or(0)
                })
                .max()
                .unwrap_or(0);
            end -= held;
        }
        let start = self.emitted;
        self.emitted = end.max(start);
        &self.text[start..self.emitted]
    }

    /// Ends the stream: flushes incomplete bytes as U+FFFD and returns the rest of the text.
    pub fn finish(&mut self) -> &str {
        if !self.stopped {
            let before = self.text.len();
            self.chars += decode_utf8_prefix(&mut self.pending, &mut self.text, true);
            self.check_stop(before);
        }
        let start = self.emitted;
        self.emitted = self.text.len();
        &self.text[start..]
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Moves the decodable prefix of `pending` into `out`; invalid bytes become U+FFFD. An
/// incomplete sequence at the end stays in `pending` unless `flush`. Returns the number of
/// characters added.
fn decode_utf8_prefix(pending: &mut Vec<u8>, out: &mut String, flush: bool) -> usize {
    let start = out.len();
    let mut consumed = 0;
    loop {
        match std::str::from_utf8(&pending[consumed..]) {
            Ok(s) => {
                out.push_str(s);
                consumed = pending.len();
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(
                    std::str::from_utf8(&pending[consumed..consumed + valid]).unwrap_or_default(),
                );
                consumed += valid;
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        consumed += bad;
                    }
                    None if flush => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        consumed = pending.len();
                        break;
                    }
                    None => break,
                }
            }
        }
    }
    pending.drain(..consumed);
    out[start..].chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_multibyte_characters_across_tokens() {
        let mut t = TextStream::new(&[]);
        let crab = "🦀".as_bytes();
        t.push(&crab[..2]);
        assert_eq!(t.take_ready(), "");
        t.push(&crab[2..]);
        assert_eq!(t.take_ready(), "🦀");
        t.push(b"\xff ok");
        assert_eq!(t.take_ready(), "\u{FFFD} ok");
        t.push(&crab[..1]);
        assert_eq!(t.char_len(), 5);
        assert_eq!(t.finish(), "\u{FFFD}");
        assert_eq!(t.char_len(), t.text().chars().count());
    }

    #[test]
    fn stop_string_across_tokens_is_cut_and_never_shown() {
        let mut t = TextStream::new(&["\nQ:".to_string()]);
        let mut shown = String::new();
        for piece in ["The whale", ".", "\n", "Q", ": again"] {
            let stop = t.push(piece.as_bytes());
            shown.push_str(t.take_ready());
            if stop {
                break;
            }
        }
        shown.push_str(t.finish());
        assert_eq!(shown, "The whale.");
        assert_eq!(t.text(), "The whale.");
        assert_eq!(t.char_len(), 10);
    }

    #[test]
    fn held_back_prefix_is_released_when_it_diverges() {
        let mut t = TextStream::new(&["END".to_string()]);
        t.push(b"abcE");
        assert_eq!(t.take_ready(), "abc");
        t.push(b"N");
        assert_eq!(t.take_ready(), "");
        t.push(b"x");
        assert_eq!(t.take_ready(), "ENx");
        assert_eq!(t.finish(), "");
    }
}
