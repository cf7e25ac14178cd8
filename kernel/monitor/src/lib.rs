//! The monitor's input side, with no hardware in sight: a line editor fed
//! one received byte at a time ([`LineEditor`]: echo, backspace, Ctrl-U,
//! Ctrl-C, history on the up and down arrows), the command grammar
//! ([`Command::parse`], with one typed [`CommandError`] per refusal), the
//! hex-dump and checksum formats of `blk read` ([`hexdump`]), and the
//! lock-free ring between the receive interrupt and the monitor
//! ([`InputRing`]).
//!
//! The kernel moves bytes between the console and [`LineEditor::feed`] and
//! runs the parsed commands; everything that decides what a byte or a word
//! means lives here and is tested on the host.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

mod command;
mod editor;
pub mod hexdump;
mod ring;

pub use command::{BlkCommand, COMMANDS, Command, CommandError, MAX_READ_SECTORS};
pub use editor::{Echo, LINE_MAX, LineEditor, PROMPT};
pub use ring::InputRing;
