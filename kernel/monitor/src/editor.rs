//! Line editing on a serial terminal, one received byte at a time.
//!
//! Understood: printable ASCII (appended and echoed), Enter (`\r`, `\n`, or
//! `\r\n` as one), backspace (DEL or BS), Ctrl-U (erase the line), Ctrl-C
//! (abandon the line), and the up and down arrows (`ESC [ A` / `ESC [ B`,
//! or the `ESC O` forms an application-mode keypad sends) to walk the
//! history of entered lines. Other escape sequences (left and right arrows,
//! function keys) are consumed whole and ignored, other control bytes and
//! non-ASCII bytes are dropped, and a byte that would overflow the line
//! rings the bell instead: nothing a terminal sends can corrupt the line.

/// Longest line accepted, in bytes.
pub const LINE_MAX: usize = 120;

/// Lines kept in the history.
const HISTORY: usize = 16;

/// What the monitor prints before each line it reads.
pub const PROMPT: &str = "> ";

const BACKSPACE: u8 = 0x08;
const DELETE: u8 = 0x7f;
const CTRL_C: u8 = 0x03;
const CTRL_U: u8 = 0x15;
const ESC: u8 = 0x1b;
const BELL: u8 = 0x07;
/// Moves the cursor back over one character and blanks it.
const RUB_OUT: &[u8] = b"\x08 \x08";

/// Where the editor's echo goes (the console).
pub trait Echo {
    /// Writes `bytes` to the terminal as they are.
    fn echo(&mut self, bytes: &[u8]);
}

/// A line of printable ASCII.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Line {
    bytes: [u8; LINE_MAX],
    len: usize,
}

impl Line {
    const EMPTY: Self = Self {
        bytes: [0; LINE_MAX],
        len: 0,
    };

    /// The line's text.
    pub fn as_str(&self) -> &str {
        // Only printable ASCII (0x20..=0x7e) is ever stored.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl core::fmt::Debug for Line {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Where the editor is in an escape sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escape {
    /// Not in one.
    None,
    /// After ESC.
    Started,
    /// After `ESC [` or `ESC O`, before the final byte.
    Sequence,
}

/// The line being typed and the history of entered lines.
pub struct LineEditor {
    line: Line,
    /// Ring of entered lines; `history_next` is the slot written next.
    history: [Line; HISTORY],
    history_len: usize,
    history_next: usize,
    /// How far back the up arrow has gone (0: the line being typed).
    browsing: usize,
    escape: Escape,
    /// The previous byte was `\r` (so a following `\n` is the same Enter).
    after_cr: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    /// An empty line and history.
    pub const fn new() -> Self {
        Self {
            line: Line::EMPTY,
            history: [Line::EMPTY; HISTORY],
            history_len: 0,
            history_next: 0,
            browsing: 0,
            escape: Escape::None,
            after_cr: false,
        }
    }

    /// Takes one received byte, echoing its effect through `echo`; returns
    /// the line when the byte ends it (Enter, or Ctrl-C with an empty line).
    pub fn feed(&mut self, byte: u8, echo: &mut impl Echo) -> Option<Line> {
        let after_cr = core::mem::replace(&mut self.after_cr, byte == b'\r');
        match self.escape {
            Escape::Started => {
                self.escape = if byte == b'[' || byte == b'O' {
                    Escape::Sequence
                } else {
                    Escape::None
                };
                return None;
            }
            Escape::Sequence => {
                // Parameter and intermediate bytes continue the sequence; a
                // final byte (0x40..=0x7e) ends it, anything else aborts it.
                if (0x40..=0x7e).contains(&byte) {
                    self.escape = Escape::None;
                    match byte {
                        b'A' => self.browse_back(echo),
                        b'B' => self.browse_forward(echo),
                        _ => {}
                    }
                } else if !(0x20..=0x3f).contains(&byte) {
                    self.escape = Escape::None;
                }
                return None;
            }
            Escape::None => {}
        }
        match byte {
            b'\n' if after_cr => None,
            b'\r' | b'\n' => {
                echo.echo(b"\n");
                Some(self.enter())
            }
            BACKSPACE | DELETE => {
                if self.line.len > 0 {
                    self.line.len -= 1;
                    echo.echo(RUB_OUT);
                }
                None
            }
            CTRL_U => {
                self.erase(echo);
                None
            }
            CTRL_C => {
                echo.echo(b"^C\n");
                self.line = Line::EMPTY;
                self.browsing = 0;
                Some(Line::EMPTY)
            }
            ESC => {
                self.escape = Escape::Started;
                None
            }
            0x20..=0x7e => {
                if self.line.len < LINE_MAX {
                    self.line.bytes[self.line.len] = byte;
                    self.line.len += 1;
                    echo.echo(&[byte]);
                } else {
                    echo.echo(&[BELL]);
                }
                None
            }
            _ => None,
        }
    }

    /// Ends the line: returns it and records it in the history (unless it
    /// is blank or repeats the newest entry).
    fn enter(&mut self) -> Line {
        let line = core::mem::replace(&mut self.line, Line::EMPTY);
        self.browsing = 0;
        let text = line.as_str().trim();
        if !text.is_empty()
            && self
                .nth_back(1)
                .is_none_or(|newest| newest.as_str() != text)
        {
            let mut entry = Line::EMPTY;
            entry.bytes[..text.len()].copy_from_slice(text.as_bytes());
            entry.len = text.len();
            self.history[self.history_next] = entry;
            self.history_next = (self.history_next + 1) % HISTORY;
            self.history_len = (self.history_len + 1).min(HISTORY);
        }
        line
    }

    /// The entry `n` lines back (1: the newest).
    fn nth_back(&self, n: usize) -> Option<Line> {
        (1..=self.history_len)
            .contains(&n)
            .then(|| self.history[(self.history_next + HISTORY - n) % HISTORY])
    }

    /// Echoes the line typed so far again, for a terminal that printed
    /// something else (and a new prompt) in the middle of it.
    pub fn redraw(&self, echo: &mut impl Echo) {
        echo.echo(self.line.as_bytes());
    }

    fn erase(&mut self, echo: &mut impl Echo) {
        for _ in 0..self.line.len {
            echo.echo(RUB_OUT);
        }
        self.line = Line::EMPTY;
    }

    fn replace(&mut self, line: Line, echo: &mut impl Echo) {
        self.erase(echo);
        self.line = line;
        echo.echo(line.as_bytes());
    }

    fn browse_back(&mut self, echo: &mut impl Echo) {
        match self.nth_back(self.browsing + 1) {
            Some(line) => {
                self.browsing += 1;
                self.replace(line, echo);
            }
            None => echo.echo(&[BELL]),
        }
    }

    fn browse_forward(&mut self, echo: &mut impl Echo) {
        if self.browsing == 0 {
            echo.echo(&[BELL]);
            return;
        }
        self.browsing -= 1;
        let line = self.nth_back(self.browsing).unwrap_or(Line::EMPTY);
        self.replace(line, echo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A terminal: the echo stream, rendered as a screen line would show it.
    #[derive(Default)]
    struct Terminal {
        raw: Vec<u8>,
    }

    impl Echo for Terminal {
        fn echo(&mut self, bytes: &[u8]) {
            self.raw.extend_from_slice(bytes);
        }
    }

    impl Terminal {
        /// What the screen shows: backspaces move left, bells are silent.
        fn screen(&self) -> String {
            let mut lines = vec![Vec::new()];
            let mut column: usize = 0;
            for &byte in &self.raw {
                match byte {
                    b'\n' => {
                        lines.push(Vec::new());
                        column = 0;
                    }
                    BACKSPACE => column = column.saturating_sub(1),
                    BELL => {}
                    _ => {
                        let line = lines.last_mut().unwrap();
                        if column < line.len() {
                            line[column] = byte;
                        } else {
                            line.push(byte);
                        }
                        column += 1;
                    }
                }
            }
            let rendered: Vec<String> = lines
                .iter()
                .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
                .collect();
            rendered.join("\n")
        }
    }

    /// Feeds `input`, returning the lines it completed.
    fn type_in(editor: &mut LineEditor, terminal: &mut Terminal, input: &[u8]) -> Vec<String> {
        input
            .iter()
            .filter_map(|&b| editor.feed(b, terminal))
            .map(|line| line.as_str().to_string())
            .collect()
    }

    fn run(input: &[u8]) -> (Vec<String>, Terminal) {
        let mut editor = LineEditor::new();
        let mut terminal = Terminal::default();
        let lines = type_in(&mut editor, &mut terminal, input);
        (lines, terminal)
    }

    #[test]
    fn enter_in_every_form_ends_one_line() {
        let (lines, terminal) = run(b"pools\rmem\nxen\r\nirq\n\r");
        assert_eq!(lines, ["pools", "mem", "xen", "irq", ""]);
        assert_eq!(terminal.screen(), "pools\nmem\nxen\nirq\n\n");
    }

    #[test]
    fn backspace_and_delete_remove_one_character() {
        let (lines, terminal) = run(b"poolx\x7fs\rmemm\x08\r\x7f\x7fxen\r");
        assert_eq!(lines, ["pools", "mem", "xen"]);
        assert_eq!(terminal.screen(), "pools\nmem\nxen\n");
        // Backspace on an empty line echoes nothing.
        assert!(!terminal.raw.windows(4).any(|w| w == b"\n\x08 \x08"));
    }

    #[test]
    fn a_redraw_echoes_the_line_typed_so_far() {
        let mut editor = LineEditor::new();
        let mut terminal = Terminal::default();
        type_in(&mut editor, &mut terminal, b"blk rea");
        let mut again = Terminal::default();
        editor.redraw(&mut again);
        assert_eq!(again.screen(), "blk rea");
        assert_eq!(type_in(&mut editor, &mut again, b"d\r"), ["blk read"]);
    }

    #[test]
    fn ctrl_u_erases_the_line() {
        let (lines, terminal) = run(b"blk read\x15pools\r");
        assert_eq!(lines, ["pools"]);
        assert_eq!(terminal.screen(), "pools\n");
    }

    #[test]
    fn ctrl_c_abandons_the_line() {
        let (lines, terminal) = run(b"reboo\x03");
        assert_eq!(lines, [""]);
        assert_eq!(terminal.screen(), "reboo^C\n");
    }

    #[test]
    fn up_arrow_recalls_previous_lines() {
        let mut editor = LineEditor::new();
        let mut terminal = Terminal::default();
        type_in(&mut editor, &mut terminal, b"pools\rdma /virtio\r");
        // Up once: the newest; twice: the one before; Enter runs it.
        assert_eq!(
            type_in(&mut editor, &mut terminal, b"\x1b[A\x1b[A\r"),
            ["pools"]
        );
        // The application-keypad form works too, and the recalled line can
        // be edited before Enter.
        assert_eq!(
            type_in(
                &mut editor,
                &mut terminal,
                b"\x1bOA\x7f\x7f\x7f\x7f\x7fmem\r"
            ),
            ["mem"]
        );
        assert!(
            terminal.screen().ends_with("\nmem\n"),
            "{}",
            terminal.screen()
        );
    }

    #[test]
    fn down_arrow_walks_back_to_an_empty_line() {
        let mut editor = LineEditor::new();
        let mut terminal = Terminal::default();
        type_in(&mut editor, &mut terminal, b"one\rtwo\r");
        assert_eq!(
            type_in(&mut editor, &mut terminal, b"\x1b[A\x1b[A\x1b[B\r"),
            ["two"]
        );
        assert_eq!(
            type_in(&mut editor, &mut terminal, b"\x1b[A\x1b[Bxen\r"),
            ["xen"]
        );
    }

    #[test]
    fn history_ends_ring_the_bell() {
        let mut editor = LineEditor::new();
        let mut terminal = Terminal::default();
        type_in(&mut editor, &mut terminal, b"\x1b[A\x1b[B");
        assert_eq!(terminal.raw, [BELL, BELL]);
        type_in(&mut editor, &mut terminal, b"a\r\x1b[A\x1b[A");
        assert_eq!(terminal.raw.last(), Some(&BELL));
        assert_eq!(type_in(&mut editor, &mut terminal, b"\r"), ["a"]);
    }

    #[test]
    fn history_skips_blank_and_repeated_lines_and_keeps_the_newest() {
        let mut editor = LineEditor::new();
        let mut terminal = Terminal::default();
        type_in(&mut editor, &mut terminal, b"a\r\r  \ra\rb\r");
        assert_eq!(
            type_in(&mut editor, &mut terminal, b"\x1b[A\x1b[A\r"),
            ["a"]
        );
        // Entries now a, b, a: the fourth up arrow rings and stays on the oldest.
        assert_eq!(
            type_in(&mut editor, &mut terminal, b"\x1b[A\x1b[A\r"),
            ["b"]
        );
        terminal.raw.clear();
        assert_eq!(
            type_in(
                &mut editor,
                &mut terminal,
                b"\x1b[A\x1b[A\x1b[A\x1b[A\x1b[A\r"
            ),
            ["a"]
        );
        assert!(terminal.raw.contains(&BELL));
        // The ring keeps the newest HISTORY lines.
        for i in 0..HISTORY + 4 {
            type_in(&mut editor, &mut terminal, format!("cmd{i}\r").as_bytes());
        }
        let mut ups = b"\x1b[A".repeat(HISTORY + 2);
        ups.push(b'\r');
        assert_eq!(
            type_in(&mut editor, &mut terminal, &ups),
            [format!("cmd{}", 4)]
        );
    }

    #[test]
    fn other_escape_sequences_and_control_bytes_are_ignored() {
        // Left arrow, F5 (ESC [ 1 5 ~), a lone ESC before a letter, tab,
        // NUL and non-ASCII bytes.
        let (lines, terminal) = run(b"po\x1b[D\x1b[15~o\x1bxls\t\0\xc3\xa9\r");
        assert_eq!(lines, ["pools"]);
        assert_eq!(terminal.screen(), "pools\n");
    }

    #[test]
    fn a_full_line_rings_the_bell_instead_of_growing() {
        let mut input = vec![b'x'; LINE_MAX + 5];
        input.push(b'\r');
        let (lines, terminal) = run(&input);
        assert_eq!(lines, ["x".repeat(LINE_MAX)]);
        assert_eq!(terminal.raw.iter().filter(|&&b| b == BELL).count(), 5);
    }
}
