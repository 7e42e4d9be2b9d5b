//! Text from outside (an agent's transcript, its error messages) made safe for a log line.
//!
//! Log lines are a contract with operators, one event per line, and each call's lines start
//! with `[uuid]`. A newline inside a transcript would end the line early and let the agent
//! write a line of its own that looks like avr-core's; other control characters can rewrite
//! a terminal. And a peer decides how long its text is: a 64 KiB message must not make a
//! 64 KiB log line. So such text is logged through [`Printable`].

use std::fmt;

/// Bytes of outside text a log line shows at most; the rest is counted, not written. Long
/// enough for a transcript of several sentences, short enough that a hostile peer cannot
/// fill the disk a line at a time.
pub const MAX_SHOWN: usize = 2_000;

/// Displays a string with its control characters escaped: newline as `\n`, tab as `\t`,
/// every other C0 or C1 control, DEL and the Unicode line and paragraph separators as
/// `\u{..}` (Rust's own escape form); cut after [`MAX_SHOWN`] bytes with
/// `… (<n> more bytes)`. Everything else, non-ASCII letters included, is written as it is, so
/// the text stays readable. A backslash is not escaped: the result is for reading, not for
/// parsing back.
pub struct Printable<'a>(pub &'a str);

/// Characters that end or rewrite a line somewhere: controls, and U+2028/U+2029, which some
/// log viewers and JSON-lines tools treat as line breaks.
fn unsafe_in_a_line(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cut = self.0.len().min(MAX_SHOWN);
        while !self.0.is_char_boundary(cut) {
            cut -= 1;
        }
        let (text, rest) = self.0.split_at(cut);
        let mut clean_from = 0;
        for (at, c) in text.char_indices().filter(|&(_, c)| unsafe_in_a_line(c)) {
            f.write_str(&text[clean_from..at])?;
            match c {
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                other => write!(f, "\\u{{{:x}}}", u32::from(other))?,
            }
            clean_from = at + c.len_utf8();
        }
        f.write_str(&text[clean_from..])?;
        if !rest.is_empty() {
            write!(f, "… ({} more bytes)", rest.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        Printable(text).to_string()
    }

    #[test]
    fn plain_text_and_unicode_are_unchanged() {
        assert_eq!(shown(""), "");
        assert_eq!(shown("Hello, how can I help?"), "Hello, how can I help?");
        assert_eq!(
            shown("quote \" ünïcode 日本語 🙂 \\n"),
            "quote \" ünïcode 日本語 🙂 \\n"
        );
    }

    #[test]
    fn newline_and_tab_are_escaped() {
        assert_eq!(
            shown("hi\n[0000] forged line\tx"),
            "hi\\n[0000] forged line\\tx"
        );
        assert_eq!(shown("\n\n"), "\\n\\n");
    }

    #[test]
    fn other_controls_and_del_are_escaped_as_code_points() {
        assert_eq!(shown("a\rb"), "a\\u{d}b");
        assert_eq!(shown("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(shown("\0"), "\\u{0}");
        assert_eq!(shown("x\u{7f}"), "x\\u{7f}");
        // C1 controls (two bytes in UTF-8), around multi-byte letters.
        assert_eq!(shown("é\u{85}ü\u{9f}"), "é\\u{85}ü\\u{9f}");
        assert!(!shown("\u{0}\u{1f}\u{7f}\u{80}\u{9f}")
            .chars()
            .any(char::is_control));
    }

    #[test]
    fn long_text_is_cut_at_a_character_with_the_rest_counted() {
        let long = "é".repeat(MAX_SHOWN); // 2 bytes each
        let shown = shown(&long);
        assert!(shown.starts_with(&"é".repeat(MAX_SHOWN / 2)));
        assert!(shown.ends_with(&format!("… ({} more bytes)", MAX_SHOWN)));
        let odd = format!("a{}", "é".repeat(MAX_SHOWN));
        // The cut falls inside an "é": it moves back to the character before (1,999 bytes shown).
        assert!(Printable(&odd)
            .to_string()
            .ends_with(&format!("… ({} more bytes)", MAX_SHOWN + 2)));
        assert_eq!(
            Printable(&"x".repeat(MAX_SHOWN)).to_string().len(),
            MAX_SHOWN
        );
    }

    #[test]
    fn unicode_line_separators_are_escaped() {
        assert_eq!(shown("a\u{2028}b\u{2029}c"), "a\\u{2028}b\\u{2029}c");
    }
}
