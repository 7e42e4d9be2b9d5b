//! The model's running text → clean sentences to speak.
//!
//! The LLM streams its answer in pieces cut anywhere (inside `<think>`, inside `**`, between a
//! `.` and the space that makes it a sentence end). [`Sentences`] turns that stream into whole
//! sentences as early as they are certain, so the first one can go to text-to-speech while the
//! model is still writing; [`speakable`] turns Markdown-flavoured model text into what a TTS
//! engine should read aloud.
//!
//! Every decision depends only on the text, never on where the pieces were cut: a boundary that
//! needs the next character waits for it (or for [`Sentences::finish`]), and a possible start of
//! a `<think>` tag is held back until it is known. The tests check this by cutting a sample
//! answer at every byte position.

/// A sentence is cut after this many characters even without a sentence end, so a model that
/// writes kilobytes without punctuation still starts speaking (and TTS requests stay small).
/// 400 characters is about 25 s of speech: long enough that real sentences are never cut.
pub const MAX_SENTENCE_CHARS: usize = 400;

/// The opening tag of a reasoning model's hidden reasoning (DeepSeek-R1, Qwen3, …).
const THINK_OPEN: &str = "<think>";
/// Its closing tag; a stray one (a template that opened the block itself) is dropped too.
const THINK_CLOSE: &str = "</think>";

/// Words that end in a `.` which is not a sentence end. Small on purpose: a missing entry
/// costs a short pause, a wrong one (`etc.`, `a.m.` often end sentences) a run-on sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "e.g", "i.e", "cf", "approx",
    "fig",
];

/// Running text in, sentences to speak out, in order.
#[derive(Debug, Default)]
pub struct Sentences {
    /// Inside `<think>…</think>`: input is dropped until the closing tag.
    in_think: bool,
    /// Input held back because it may be the start of a think tag (`<th`).
    held: String,
    /// Text not yet emitted (think blocks removed); during a split, sentences already emitted
    /// stay in front of `start` until the split ends, so many sentences in one big piece cost
    /// one move of the rest, not one each.
    text: String,
    /// Where the sentence being built starts in `text`.
    start: usize,
    /// Bytes of `text` already known not to end the sentence.
    scanned: usize,
    /// Characters in `text[start..scanned]`, for the length cap.
    scanned_chars: usize,
    /// The sentence being built starts a line (Markdown markers and list numbers apply).
    line_start: bool,
}

impl Sentences {
    pub fn new() -> Sentences {
        Sentences {
            line_start: true,
            ..Sentences::default()
        }
    }

    /// Appends the next piece; pushes every sentence it completes onto `out` (cleaned).
    pub fn push(&mut self, piece: &str, out: &mut Vec<String>) {
        self.strip_think(piece);
        self.split(false, out);
    }

    /// The stream ended: whatever is left is the last sentence (if anything speakable). An
    /// unclosed `<think>` block is dropped. The value is ready for a new stream afterwards.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.in_think {
            let held = std::mem::take(&mut self.held);
            self.text.push_str(&held);
        }
        self.split(true, out);
        let rest = std::mem::take(&mut self.text);
        emit(&rest, self.line_start, out);
        *self = Sentences::new();
    }

    /// Moves `piece` (after any held bytes) into `text`, without think blocks.
    fn strip_think(&mut self, piece: &str) {
        let mut input = std::mem::take(&mut self.held);
        input.push_str(piece);
        let mut rest = input.as_str();
        loop {
            if self.in_think {
                match rest.find(THINK_CLOSE) {
                    Some(at) => {
                        rest = &rest[at + THINK_CLOSE.len()..];
                        self.in_think = false;
                    }
                    None => {
                        // Only a possible start of the closing tag matters from here on.
                        self.held = rest[tag_prefix_start(rest)..].to_string();
                        return;
                    }
                }
            } else {
                let open = rest.find(THINK_OPEN);
                let close = rest.find(THINK_CLOSE);
                match (open, close) {
                    (Some(o), c) if c.is_none_or(|c| o < c) => {
                        self.text.push_str(&rest[..o]);
                        rest = &rest[o + THINK_OPEN.len()..];
                        self.in_think = true;
                    }
                    (_, Some(c)) => {
                        self.text.push_str(&rest[..c]);
                        rest = &rest[c + THINK_CLOSE.len()..];
                    }
                    _ => {
                        let keep = tag_prefix_start(rest);
                        self.text.push_str(&rest[..keep]);
                        self.held = rest[keep..].to_string();
                        return;
                    }
                }
            }
        }
    }

    /// Emits every sentence of `text` whose end is certain; at the end of the stream
    /// (`at_end`) the end of the text counts as whitespace.
    fn split(&mut self, at_end: bool, out: &mut Vec<String>) {
        self.find_sentences(at_end, out);
        self.text.drain(..self.start);
        self.scanned -= self.start;
        self.start = 0;
    }

    /// The work of [`Sentences::split`], leaving emitted text before `start`.
    fn find_sentences(&mut self, at_end: bool, out: &mut Vec<String>) {
        while let Some(c) = self.text[self.scanned..].chars().next() {
            if c == '\n' {
                self.cut(self.scanned + 1, true, out);
                continue;
            }
            if !is_terminator(c) {
                self.advance(self.scanned + c.len_utf8(), out);
                continue;
            }
            let run_end = self.scanned + terminator_run_len(&self.text[self.scanned..]);
            let next = self.text[run_end..].chars().next();
            if next.is_none() && !at_end {
                return; // the run may go on, or the next piece decides
            }
            if self.ends_sentence(run_end, next) {
                self.cut(run_end, false, out);
            } else {
                self.advance(run_end, out);
            }
        }
    }

    /// Whether the terminator run `text[scanned..run_end]`, followed by `next`, ends the
    /// sentence.
    fn ends_sentence(&self, run_end: usize, next: Option<char>) -> bool {
        let run = &self.text[self.scanned..run_end];
        // Chinese and Japanese full stops need no space after them.
        if run.contains(['。', '！', '？']) {
            return true;
        }
        if next.is_some_and(|n| !n.is_whitespace()) {
            return false; // 3.14, example.com, "?!x"
        }
        if run != "." {
            return true; // "...", "?!", `."`
        }
        let before = &self.text[self.start..self.scanned];
        let word = before
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or("")
            .trim_start_matches(['(', '"', '\'', '“', '‘', '*', '_']);
        if ABBREVIATIONS.iter().any(|a| word.eq_ignore_ascii_case(a)) {
            return false;
        }
        // "1. " starting a line is a list item's number, not a sentence end.
        let marker = before.trim_start().trim_start_matches('>').trim_start();
        let is_number = !marker.is_empty() && marker.len() <= 3;
        !(self.line_start && is_number && marker.bytes().all(|b| b.is_ascii_digit()))
    }

    /// Marks `text[scanned..to]` as not ending the sentence; cuts an over-long sentence.
    fn advance(&mut self, to: usize, out: &mut Vec<String>) {
        self.scanned_chars += self.text[self.scanned..to].chars().count();
        self.scanned = to;
        if self.scanned_chars >= MAX_SENTENCE_CHARS {
            let at = self.start + long_cut(&self.text[self.start..self.scanned]);
            self.cut(at, false, out);
        }
    }

    /// Emits `text[start..at]` as a sentence; the rest starts the next one.
    fn cut(&mut self, at: usize, next_starts_line: bool, out: &mut Vec<String>) {
        emit(&self.text[self.start..at], self.line_start, out);
        self.line_start = next_starts_line;
        self.start = at;
        self.scanned = self.scanned.max(at);
        self.scanned_chars = self.text[at..self.scanned].chars().count();
    }
}

/// Cleans one raw sentence and keeps it if anything is left to say.
fn emit(raw: &str, line_start: bool, out: &mut Vec<String>) {
    let mut cleaned = String::new();
    clean_line(raw.trim_end_matches('\n'), line_start, &mut cleaned);
    let spoken = collapse(&cleaned);
    if !spoken.is_empty() {
        out.push(spoken);
    }
}

/// Where the part of `s` that may begin a think tag starts (`s.len()` if none does): a `<`
/// followed by a proper prefix of `<think>` or `</think>`, up to the end of `s`.
fn tag_prefix_start(s: &str) -> usize {
    match s.rfind('<') {
        Some(at) => {
            let tail = &s[at..];
            if THINK_OPEN.starts_with(tail) || THINK_CLOSE.starts_with(tail) {
                at
            } else {
                s.len()
            }
        }
        None => s.len(),
    }
}

/// Characters that end a sentence when a space (or the end) follows.
fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？')
}

/// Characters that close a sentence after its terminator: quotes, brackets, the closing half
/// of Markdown emphasis (`**Done.**`).
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | ')' | ']' | '”' | '’' | '»' | '」' | '』' | '*' | '_' | '`'
    )
}

/// Length in bytes of the run of terminators (then closers) at the start of `s`.
fn terminator_run_len(s: &str) -> usize {
    s.char_indices()
        .find(|&(_, c)| !(is_terminator(c) || is_closer(c)))
        .map_or(s.len(), |(i, _)| i)
}

/// Where to cut an over-long `sentence`: after its last clause mark (`,`, `;`, `:`) followed
/// by a space in its second half, else at its last space, else at its end.
fn long_cut(sentence: &str) -> usize {
    let mut half = sentence.len() / 2;
    while !sentence.is_char_boundary(half) {
        half -= 1;
    }
    let clause = sentence[half..]
        .match_indices([',', ';', ':'])
        .rev()
        .map(|(i, mark)| half + i + mark.len())
        .find(|&end| sentence[end..].starts_with(' '));
    let space = || {
        sentence
            .char_indices()
            .rev()
            .find(|&(i, c)| i > 0 && c.is_whitespace())
            .map(|(i, _)| i)
    };
    clause.or_else(space).unwrap_or(sentence.len())
}

/// Text as a TTS engine should read it (used per sentence; pub for the greeting): without
/// think blocks, Markdown markup (emphasis, code ticks, headings, list markers, quotes, links
/// → their text), emoji and pictographic symbols; whitespace collapsed. Empty when no letter
/// or digit is left (a `---` rule, a lone emoji): there is nothing to say.
pub fn speakable(text: &str) -> String {
    let mut filter = Sentences::new();
    filter.strip_think(text);
    if !filter.in_think {
        let held = std::mem::take(&mut filter.held);
        filter.text.push_str(&held);
    }
    let mut cleaned = String::new();
    for line in filter.text.split('\n') {
        clean_line(line, true, &mut cleaned);
        cleaned.push(' ');
    }
    collapse(&cleaned)
}

/// Appends `line` without its markup to `out`; `line_start`: it begins a Markdown line, so
/// heading, quote and list markers are removed.
fn clean_line(line: &str, line_start: bool, out: &mut String) {
    let rest = if line_start {
        strip_line_markers(line)
    } else {
        line
    };
    clean_inline(rest, out);
}

/// `line` after its leading Markdown block markers: `> `, `## `, `- `, `* `, `+ `, `• `,
/// `1. `, `1) `.
fn strip_line_markers(line: &str) -> &str {
    let mut rest = line.trim_start();
    while let Some(quoted) = rest.strip_prefix('>') {
        rest = quoted.trim_start();
    }
    let hashes = rest.len() - rest.trim_start_matches('#').len();
    if (1..=6).contains(&hashes) && followed_by_space(rest, hashes) {
        rest = rest[hashes..].trim_start();
    }
    for bullet in ["-", "*", "+", "•", "–"] {
        if rest.starts_with(bullet) && followed_by_space(rest, bullet.len()) {
            return rest[bullet.len()..].trim_start();
        }
    }
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if (1..=3).contains(&digits)
        && rest[digits..].starts_with(['.', ')'])
        && followed_by_space(rest, digits + 1)
    {
        return rest[digits + 1..].trim_start();
    }
    rest
}

/// Whether `s[at..]` starts with whitespace (a marker needs a space after it).
fn followed_by_space(s: &str, at: usize) -> bool {
    s[at..].starts_with(char::is_whitespace)
}

/// Appends `s` to `out` without inline markup and pictographs.
fn clean_inline(s: &str, out: &mut String) {
    let mut prev: Option<char> = None;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let link_at = match c {
            '[' => Some(i),
            '!' if next == Some('[') => Some(i + 1),
            _ => None,
        };
        if let Some((label, end)) = link_at.and_then(|at| link(s, at)) {
            clean_inline(label, out);
            while chars.peek().is_some_and(|&(j, _)| j < end) {
                chars.next();
            }
            prev = Some(')');
            continue;
        }
        let keep = match c {
            // Asterisks are emphasis or bullets; TTS engines read a literal one aloud. 2*3 stays.
            '*' => {
                prev.is_some_and(|p| p.is_ascii_digit()) && next.is_some_and(|n| n.is_ascii_digit())
            }
            // Underscores inside a word are snake_case, elsewhere emphasis.
            '_' => {
                prev.is_some_and(char::is_alphanumeric) && next.is_some_and(char::is_alphanumeric)
            }
            '`' => false,
            '~' => prev != Some('~') && next != Some('~'),
            _ => true,
        };
        prev = Some(c);
        if !keep || is_invisible(c) {
            continue;
        }
        if is_pictographic(c) || c.is_control() {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
}

/// `[label](target)` starting at byte `at` of `s`: the label and the byte after `)`.
fn link(s: &str, at: usize) -> Option<(&str, usize)> {
    let rest = s.get(at..)?.strip_prefix('[')?;
    let close = rest.find(']')?;
    let label = &rest[..close];
    let target = rest[close + 1..].strip_prefix('(')?;
    let end = target.find(')')?;
    if label.contains('[') || target[..end].contains(char::is_whitespace) {
        return None;
    }
    let consumed = 1 + close + 2 + end + 1;
    Some((label, at + consumed))
}

/// Characters that only shape an emoji (joiners, variation selectors, keycaps, tags) or are
/// invisible: removed without a trace.
fn is_invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x200B..=0x200D | 0x2060 | 0xFEFF | 0xFE00..=0xFE0F | 0x20E3 | 0xE0000..=0xE007F
            | 0xE0100..=0xE01EF
    )
}

/// Emoji and pictographic symbols (roughly Unicode's Extended_Pictographic, plus arrows, box
/// drawing and geometric shapes): a TTS engine either skips them or reads their long names
/// ("smiling face with smiling eyes"). Letters of every script, digits, punctuation and
/// currency signs are outside these ranges. Replaced by a space, so `fine👍thanks` stays two
/// words.
fn is_pictographic(c: char) -> bool {
    matches!(
        c as u32,
        0x2022 // • (inline bullet)
            | 0x2139 // ℹ
            | 0x2190..=0x21FF // arrows
            | 0x2300..=0x23FF // technical: ⌚ ⏰ ⏩
            | 0x2500..=0x25FF // box drawing, blocks, geometric shapes: ▶ ●
            | 0x2600..=0x27BF // miscellaneous symbols, dingbats: ☀ ✅ ❤
            | 0x2900..=0x297F // supplemental arrows
            | 0x2B00..=0x2BFF // symbols and arrows: ⭐ ⬆
            | 0x3030
            | 0x303D
            | 0x3297
            | 0x3299
            | 0x1F000..=0x1FBFF // cards, enclosed letters, flags, emoji, pictographs
    )
}

/// `s` with whitespace runs as single spaces, no space before closing punctuation (left where
/// an emoji was removed), trimmed; empty if no letter or digit is left.
fn collapse(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space && !out.is_empty() && !matches!(c, '.' | ',' | '!' | '?' | ';' | ':' | '…') {
            out.push(' ');
        }
        space = false;
        out.push(c);
    }
    if out.chars().any(char::is_alphanumeric) {
        out
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(pieces: &[&str]) -> Vec<String> {
        let mut s = Sentences::new();
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        out
    }

    const SAMPLE: &str = "<think>The user wants pi. Let me answer.</think>\n\n\
        ## Answer\n\nHello Mr. Smith! Pi is about 3.14, e.g. in **school** math… \
        Really?! Yes.\n\n1. First _item_ here.\n2. Second `code` item\n\
        - See [the docs](https://example.com/a.b) 👍🏽 now. \"Quoted.\" Done 🎉\n\
        Wait... what? 你好。再见！ snake_case_name stays<think>hidden. text</think> ok.";

    fn sample_sentences() -> Vec<String> {
        vec![
            "Answer".to_string(),
            "Hello Mr. Smith!".to_string(),
            "Pi is about 3.14, e.g. in school math…".to_string(),
            "Really?!".to_string(),
            "Yes.".to_string(),
            "First item here.".to_string(),
            "Second code item".to_string(),
            "See the docs now.".to_string(),
            "\"Quoted.\"".to_string(),
            "Done".to_string(),
            "Wait...".to_string(),
            "what?".to_string(),
            "你好。".to_string(),
            "再见！".to_string(),
            "snake_case_name stays ok.".to_string(),
        ]
    }

    #[test]
    fn sample_in_one_piece() {
        assert_eq!(all(&[SAMPLE]), sample_sentences());
    }

    #[test]
    fn every_two_way_cut_gives_the_same_sentences() {
        let want = sample_sentences();
        for (i, _) in SAMPLE.char_indices() {
            assert_eq!(all(&[&SAMPLE[..i], &SAMPLE[i..]]), want, "cut at byte {i}");
        }
    }

    #[test]
    fn char_by_char_and_odd_sized_pieces_give_the_same_sentences() {
        let want = sample_sentences();
        let chars: Vec<String> = SAMPLE.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(all(&refs), want);
        for size in 2..9 {
            let mut pieces = Vec::new();
            let mut start = 0;
            let bounds: Vec<usize> = SAMPLE.char_indices().map(|(i, _)| i).collect();
            for chunk in bounds.chunks(size).skip(1) {
                pieces.push(&SAMPLE[start..chunk[0]]);
                start = chunk[0];
            }
            pieces.push(&SAMPLE[start..]);
            assert_eq!(all(&pieces), want, "pieces of {size} chars");
        }
    }

    #[test]
    fn a_sentence_is_emitted_as_soon_as_its_end_is_certain() {
        let mut s = Sentences::new();
        let mut out = Vec::new();
        s.push("Hello there.", &mut out);
        assert!(out.is_empty(), "the next char decides: {out:?}");
        s.push(" How", &mut out);
        assert_eq!(out, ["Hello there."]);
        s.push(" are you?\n", &mut out);
        assert_eq!(out, ["Hello there.", "How are you?"]);
        s.push("Fine", &mut out);
        s.finish(&mut out);
        assert_eq!(out, ["Hello there.", "How are you?", "Fine"]);
    }

    #[test]
    fn decimals_and_abbreviations_do_not_end_sentences() {
        assert_eq!(
            all(&["It costs 3.50 dollars. Dr. Who and Mrs. Jones, i.e. both, agree. Ok"]),
            [
                "It costs 3.50 dollars.",
                "Dr. Who and Mrs. Jones, i.e. both, agree.",
                "Ok"
            ]
        );
        assert_eq!(all(&["Version 2.", "0 is out."]), ["Version 2.0 is out."]);
    }

    #[test]
    fn list_numbers_at_line_start_are_markers_not_ends() {
        assert_eq!(
            all(&["Steps:\n1. Open it.\n 2. Close it. Then 3. Rest\n10) Ten"]),
            ["Steps:", "Open it.", "Close it.", "Then 3.", "Rest", "Ten"]
        );
    }

    #[test]
    fn think_blocks_are_dropped_across_pieces() {
        assert_eq!(
            all(&[
                "<thi",
                "nk>secret. plan.</th",
                "ink>Hi. ",
                "<think>more",
                "</think>Bye."
            ]),
            ["Hi.", "Bye."]
        );
        // Unclosed at the end: dropped.
        assert_eq!(all(&["Ok. <think>I should not", " say this."]), ["Ok."]);
        // A stray closing tag (the template opened the block) is removed.
        assert_eq!(all(&["</think>Answer."]), ["Answer."]);
        // A '<' that is not a tag is kept, even at a piece end.
        assert_eq!(all(&["1 <", " 2 is true."]), ["1 < 2 is true."]);
        assert_eq!(all(&["a <thin"]), ["a <thin"]);
    }

    #[test]
    fn markdown_is_removed() {
        assert_eq!(
            speakable("**Bold** and *it* and __u__ and _e_."),
            "Bold and it and u and e."
        );
        assert_eq!(speakable("### Title"), "Title");
        assert_eq!(speakable("> - quoted `item`"), "quoted item");
        assert_eq!(speakable("* star bullet\n+ plus"), "star bullet plus");
        assert_eq!(
            speakable("Go to [our site](https://x.y/z) or ![logo](a.png)."),
            "Go to our site or logo."
        );
        assert_eq!(speakable("~~old~~ new"), "old new");
        assert_eq!(
            speakable("my_var and __init__ and 2*3"),
            "my_var and init and 2*3"
        );
        assert_eq!(speakable("C# #1 fan"), "C# #1 fan");
        assert_eq!(speakable("[not a link] (x)"), "[not a link] (x)");
    }

    #[test]
    fn emphasis_split_across_sentences_is_removed() {
        assert_eq!(all(&["**Hello. World** bye."]), ["Hello.", "World bye."]);
        assert_eq!(all(&["**Done.** Next."]), ["Done.", "Next."]);
    }

    #[test]
    fn emoji_and_symbols_are_removed_letters_of_every_script_kept() {
        assert_eq!(speakable("Great👍🏽thanks 🎉!"), "Great thanks!");
        assert_eq!(speakable("Family: 👨‍👩‍👧 ❤️ ✅ → ok"), "Family: ok");
        assert_eq!(speakable("🇫🇷 Paris ☀"), "Paris");
        assert_eq!(
            speakable("Привет, мир. مرحبا. नमस्ते. こんにちは"),
            "Привет, мир. مرحبا. नमस्ते. こんにちは"
        );
        assert_eq!(
            speakable("Costs €5, £4 or ¥300 (50%)."),
            "Costs €5, £4 or ¥300 (50%)."
        );
        assert_eq!(speakable("1️⃣ one"), "1 one");
    }

    #[test]
    fn sentences_empty_after_cleaning_are_dropped() {
        assert_eq!(all(&["Hi.\n\n---\n🎉🎉\n**\n  \nBye"]), ["Hi.", "Bye"]);
        assert_eq!(speakable("  🙂  "), "");
        assert!(all(&[""]).is_empty());
        assert!(all(&["<think>only thinking</think>"]).is_empty());
    }

    #[test]
    fn whitespace_is_collapsed() {
        assert_eq!(speakable("  a \t b\r\n c  "), "a b c");
        assert_eq!(all(&["One  \t two.   Three"]), ["One two.", "Three"]);
    }

    #[test]
    fn ellipsis_and_runs_end_sentences_but_need_a_space() {
        assert_eq!(
            all(&["Hmm… ok?! Yes... no!? fine.."]),
            ["Hmm…", "ok?!", "Yes...", "no!?", "fine.."]
        );
        assert_eq!(all(&["see example.com now"]), ["see example.com now"]);
        assert_eq!(
            all(&["He said \"stop.\" Then left."]),
            ["He said \"stop.\"", "Then left."]
        );
    }

    #[test]
    fn long_text_without_ends_is_cut_at_a_comma_or_space() {
        let clause = "word ".repeat(50); // 250 chars
        let text = format!("{clause}, {clause}{clause}");
        let got = all(&[&text]);
        assert!(got.len() >= 2, "{got:?}");
        assert!(got[0].ends_with(','), "cut after the comma: {:?}", got[0]);
        for s in &got {
            assert!(
                s.chars().count() <= MAX_SENTENCE_CHARS,
                "{} chars",
                s.chars().count()
            );
        }
        assert_eq!(got.join(" ").split_whitespace().count(), 150); // the lone "," joins a word

        let no_space = "x".repeat(1000);
        let got = all(&[&no_space]);
        assert_eq!(
            got.iter().map(String::len).collect::<Vec<_>>(),
            [400, 400, 200]
        );

        // Same cuts whatever the pieces.
        let pieces: Vec<&str> = text
            .as_bytes()
            .chunks(7)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        assert_eq!(all(&pieces), all(&[&text]));
    }

    #[test]
    fn long_cuts_respect_multi_byte_text() {
        let word = "слово, ещё 语言 ";
        let text = word.repeat(100);
        let got = all(&[&text]);
        assert!(got.len() > 2, "{got:?}");
        for s in &got {
            assert!(s.chars().count() <= MAX_SENTENCE_CHARS);
        }
        let joined: String = got.join(" ");
        assert_eq!(joined, text.trim_end());
        let mut pieces = Vec::new();
        let mut start = 0;
        for (i, _) in text.char_indices().skip(1).step_by(3) {
            pieces.push(&text[start..i]);
            start = i;
        }
        pieces.push(&text[start..]);
        assert_eq!(all(&pieces), got);
    }

    #[test]
    fn a_big_piece_of_many_sentences_splits_in_one_pass() {
        // 20,000 sentences (600 KB) in one piece: each is emitted without moving the rest of
        // the piece (a copy per sentence would be 6 GB of copying).
        let text = "Short one here. ".repeat(20_000);
        let got = all(&[&text]);
        assert_eq!(got.len(), 20_000);
        assert!(got.iter().all(|s| s == "Short one here."));
    }

    #[test]
    fn finish_resets_for_a_new_stream() {
        let mut s = Sentences::new();
        let mut out = Vec::new();
        s.push("<think>unclosed", &mut out);
        s.finish(&mut out);
        s.push("1. Fresh start.", &mut out);
        s.finish(&mut out);
        assert_eq!(out, ["Fresh start."]);
    }

    #[test]
    fn speakable_drops_think() {
        assert_eq!(
            speakable("<think>hmm</think>Welcome to **Acme**! 😀"),
            "Welcome to Acme!"
        );
    }
}
