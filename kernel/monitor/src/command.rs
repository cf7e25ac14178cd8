//! The monitor's commands and their arguments.

use core::fmt;

use log::LevelFilter;

/// Most sectors `blk read` reads at once (1 MiB). It needs no buffer (each
/// request is hashed in place as it completes): the bound only keeps one
/// command short.
pub const MAX_READ_SECTORS: u64 = 2048;

/// Largest `blk bench` span in MiB (the benchmark's sequential pass reads
/// the first `MIB` MiB of the disk).
const MAX_BENCH_MIB: u64 = 4096;

/// Every command: its usage and what it prints (`help` lists these).
pub const COMMANDS: &[(&str, &str)] = &[
    ("help", "this list"),
    (
        "mem",
        "memory banks, reserved regions with their users, the linear map, windows",
    ),
    (
        "pools",
        "DMA pools: users, usage, largest free block, Xen's answer to a flush",
    ),
    ("dma [DEVICE]", "per-device DMA counters"),
    (
        "dt PATH",
        "a device-tree node's properties, decoded where the type is known",
    ),
    (
        "xen",
        "Xen version, features, domain, event channels bound, grants in use",
    ),
    ("irq", "interrupts registered, with counts"),
    ("blk", "block devices and their counters"),
    (
        "blk read DEV LBA COUNT",
        "hex dump of sector LBA and a checksum of the rest",
    ),
    (
        "blk verify DEV SEED",
        "check the whole disk against the pattern of SEED",
    ),
    (
        "blk bench DEV MIB",
        "the block benchmark over the first MIB MiB",
    ),
    (
        "log LEVEL",
        "console log level: error, warn, info, debug or trace",
    ),
    ("poweroff", "power off"),
    ("reboot", "reboot"),
];

/// The `blk` commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkCommand<'a> {
    /// Every device and its counters.
    List,
    /// Reads `count` sectors at `lba`.
    Read {
        /// The device (a device-tree path or node name).
        device: &'a str,
        /// First sector.
        lba: u64,
        /// Sectors (1 to [`MAX_READ_SECTORS`]).
        count: u64,
    },
    /// Reads the whole device and checks it against a disk pattern.
    Verify {
        /// The device.
        device: &'a str,
        /// The pattern's seed.
        seed: u64,
    },
    /// The block benchmark.
    Bench {
        /// The device.
        device: &'a str,
        /// MiB of the sequential pass.
        mib: u64,
    },
}

/// A parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `help`.
    Help,
    /// `mem`.
    Mem,
    /// `pools`.
    Pools,
    /// `dma [DEVICE]`: every device, or one.
    Dma {
        /// The device, if one was named.
        device: Option<&'a str>,
    },
    /// `dt PATH`.
    Dt {
        /// An absolute node path.
        path: &'a str,
    },
    /// `xen`.
    Xen,
    /// `irq`.
    Irq,
    /// `blk ...`.
    Blk(BlkCommand<'a>),
    /// `log LEVEL`.
    Log(LevelFilter),
    /// `poweroff`.
    PowerOff,
    /// `reboot`.
    Reboot,
}

/// Why a command line was refused; one `error:` line on the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError<'a> {
    /// The first word is no command.
    Unknown(&'a str),
    /// A required argument is missing.
    Missing {
        /// The command, e.g. `blk read`.
        command: &'static str,
        /// The argument, e.g. `LBA`.
        argument: &'static str,
    },
    /// More words than the command takes.
    Extra {
        /// The command.
        command: &'static str,
        /// The first word too many.
        word: &'a str,
    },
    /// An argument that should be a number is not one (decimal or `0x` hex).
    NotANumber {
        /// The command.
        command: &'static str,
        /// The argument.
        argument: &'static str,
        /// What was given.
        word: &'a str,
    },
    /// A number outside what the command accepts.
    OutOfRange {
        /// The command.
        command: &'static str,
        /// The argument.
        argument: &'static str,
        /// What was given.
        value: u64,
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// `log` with a level it does not know.
    BadLevel(&'a str),
    /// `dt` with a path that is not absolute.
    RelativePath(&'a str),
}

impl fmt::Display for CommandError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(word) => write!(f, "unknown command \"{word}\" (help lists them)"),
            Self::Missing { command, argument } => {
                write!(f, "{command}: missing argument {argument}")
            }
            Self::Extra { command, word } => {
                write!(f, "{command}: unexpected argument \"{word}\"")
            }
            Self::NotANumber {
                command,
                argument,
                word,
            } => write!(f, "{command}: {argument} \"{word}\" is not a number"),
            Self::OutOfRange {
                command,
                argument,
                value,
                min,
                max,
            } => write!(
                f,
                "{command}: {argument} {value} is out of range ({min} to {max})"
            ),
            Self::BadLevel(word) => write!(
                f,
                "log: level \"{word}\" is not error, warn, info, debug or trace"
            ),
            Self::RelativePath(word) => {
                write!(f, "dt: path \"{word}\" does not start with /")
            }
        }
    }
}

impl core::error::Error for CommandError<'_> {}

/// The words of a command line after the command, consumed in order.
struct Arguments<'a, I: Iterator<Item = &'a str>> {
    command: &'static str,
    words: I,
}

impl<'a, I: Iterator<Item = &'a str>> Arguments<'a, I> {
    fn word(&mut self, argument: &'static str) -> Result<&'a str, CommandError<'a>> {
        self.words.next().ok_or(CommandError::Missing {
            command: self.command,
            argument,
        })
    }

    fn number(
        &mut self,
        argument: &'static str,
        min: u64,
        max: u64,
    ) -> Result<u64, CommandError<'a>> {
        let word = self.word(argument)?;
        let value = parse_number(word).ok_or(CommandError::NotANumber {
            command: self.command,
            argument,
            word,
        })?;
        if !(min..=max).contains(&value) {
            return Err(CommandError::OutOfRange {
                command: self.command,
                argument,
                value,
                min,
                max,
            });
        }
        Ok(value)
    }

    fn end(mut self) -> Result<(), CommandError<'a>> {
        match self.words.next() {
            Some(word) => Err(CommandError::Extra {
                command: self.command,
                word,
            }),
            None => Ok(()),
        }
    }
}

/// A decimal or `0x`-prefixed hexadecimal `u64`.
fn parse_number(word: &str) -> Option<u64> {
    match word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

impl<'a> Command<'a> {
    /// Parses a command line; `Ok(None)` for a blank one.
    pub fn parse(line: &'a str) -> Result<Option<Self>, CommandError<'a>> {
        let mut words = line.split_ascii_whitespace();
        let Some(name) = words.next() else {
            return Ok(None);
        };
        if name == "blk" {
            return Self::parse_blk(words).map(|blk| Some(Self::Blk(blk)));
        }
        let args = |command| Arguments { command, words };
        let command = match name {
            "help" => args("help").end().map(|()| Self::Help),
            "mem" => args("mem").end().map(|()| Self::Mem),
            "pools" => args("pools").end().map(|()| Self::Pools),
            "xen" => args("xen").end().map(|()| Self::Xen),
            "irq" => args("irq").end().map(|()| Self::Irq),
            "poweroff" => args("poweroff").end().map(|()| Self::PowerOff),
            "reboot" => args("reboot").end().map(|()| Self::Reboot),
            "dma" => {
                let mut args = args("dma");
                let device = args.words.next();
                args.end().map(|()| Self::Dma { device })
            }
            "dt" => {
                let mut args = args("dt");
                let path = args.word("PATH")?;
                if !path.starts_with('/') {
                    return Err(CommandError::RelativePath(path));
                }
                args.end().map(|()| Self::Dt { path })
            }
            "log" => {
                let mut args = args("log");
                let word = args.word("LEVEL")?;
                let level = match word {
                    "error" => LevelFilter::Error,
                    "warn" => LevelFilter::Warn,
                    "info" => LevelFilter::Info,
                    "debug" => LevelFilter::Debug,
                    "trace" => LevelFilter::Trace,
                    _ => return Err(CommandError::BadLevel(word)),
                };
                args.end().map(|()| Self::Log(level))
            }
            _ => Err(CommandError::Unknown(name)),
        }?;
        Ok(Some(command))
    }

    fn parse_blk(
        mut words: impl Iterator<Item = &'a str>,
    ) -> Result<BlkCommand<'a>, CommandError<'a>> {
        let Some(sub) = words.next() else {
            return Ok(BlkCommand::List);
        };
        let command = match sub {
            "read" => {
                let mut args = Arguments {
                    command: "blk read",
                    words,
                };
                let device = args.word("DEV")?;
                let lba = args.number("LBA", 0, u64::MAX)?;
                let count = args.number("COUNT", 1, MAX_READ_SECTORS)?;
                args.end()?;
                BlkCommand::Read { device, lba, count }
            }
            "verify" => {
                let mut args = Arguments {
                    command: "blk verify",
                    words,
                };
                let device = args.word("DEV")?;
                let seed = args.number("SEED", 0, u64::MAX)?;
                args.end()?;
                BlkCommand::Verify { device, seed }
            }
            "bench" => {
                let mut args = Arguments {
                    command: "blk bench",
                    words,
                };
                let device = args.word("DEV")?;
                let mib = args.number("MIB", 1, MAX_BENCH_MIB)?;
                args.end()?;
                BlkCommand::Bench { device, mib }
            }
            word => {
                return Err(CommandError::Extra {
                    command: "blk",
                    word,
                });
            }
        };
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command<'_> {
        Command::parse(line)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .unwrap()
    }

    fn refused(line: &str) -> String {
        match Command::parse(line) {
            Err(error) => error.to_string(),
            Ok(command) => panic!("{line}: accepted as {command:?}"),
        }
    }

    #[test]
    fn plain_commands() {
        assert_eq!(ok("help"), Command::Help);
        assert_eq!(ok("  mem "), Command::Mem);
        assert_eq!(ok("pools"), Command::Pools);
        assert_eq!(ok("xen"), Command::Xen);
        assert_eq!(ok("irq"), Command::Irq);
        assert_eq!(ok("poweroff"), Command::PowerOff);
        assert_eq!(ok("reboot"), Command::Reboot);
        assert_eq!(Command::parse("   "), Ok(None));
        assert_eq!(Command::parse(""), Ok(None));
    }

    #[test]
    fn arguments() {
        assert_eq!(ok("dma"), Command::Dma { device: None });
        assert_eq!(
            ok("dma /virtio_mmio@a003e00"),
            Command::Dma {
                device: Some("/virtio_mmio@a003e00")
            }
        );
        assert_eq!(ok("dt /chosen"), Command::Dt { path: "/chosen" });
        assert_eq!(ok("log debug"), Command::Log(LevelFilter::Debug));
        assert_eq!(ok("blk"), Command::Blk(BlkCommand::List));
        assert_eq!(
            ok("blk read virtio_mmio@a003e00 0x10 8"),
            Command::Blk(BlkCommand::Read {
                device: "virtio_mmio@a003e00",
                lba: 16,
                count: 8
            })
        );
        assert_eq!(
            ok("blk verify /virtio_mmio@a003e00 7"),
            Command::Blk(BlkCommand::Verify {
                device: "/virtio_mmio@a003e00",
                seed: 7
            })
        );
        assert_eq!(
            ok("blk bench d 0X40"),
            Command::Blk(BlkCommand::Bench {
                device: "d",
                mib: 64
            })
        );
    }

    #[test]
    fn each_refusal_names_what_is_wrong() {
        assert_eq!(
            refused("frob 1"),
            "unknown command \"frob\" (help lists them)"
        );
        assert_eq!(refused("help me"), "help: unexpected argument \"me\"");
        assert_eq!(refused("dma a b"), "dma: unexpected argument \"b\"");
        assert_eq!(refused("dt"), "dt: missing argument PATH");
        assert_eq!(
            refused("dt chosen"),
            "dt: path \"chosen\" does not start with /"
        );
        assert_eq!(refused("log"), "log: missing argument LEVEL");
        assert_eq!(
            refused("log loud"),
            "log: level \"loud\" is not error, warn, info, debug or trace"
        );
        assert_eq!(
            refused("log off"),
            "log: level \"off\" is not error, warn, info, debug or trace",
            "the monitor cannot silence errors"
        );
        assert_eq!(refused("blk read"), "blk read: missing argument DEV");
        assert_eq!(refused("blk read d"), "blk read: missing argument LBA");
        assert_eq!(refused("blk read d 0"), "blk read: missing argument COUNT");
        assert_eq!(
            refused("blk read d x 1"),
            "blk read: LBA \"x\" is not a number"
        );
        assert_eq!(
            refused("blk read d 0 0"),
            "blk read: COUNT 0 is out of range (1 to 2048)"
        );
        assert_eq!(
            refused("blk read d 0 2049"),
            "blk read: COUNT 2049 is out of range (1 to 2048)"
        );
        assert_eq!(
            refused("blk read d 0 1 2"),
            "blk read: unexpected argument \"2\""
        );
        assert_eq!(
            refused("blk verify d -1"),
            "blk verify: SEED \"-1\" is not a number"
        );
        assert_eq!(
            refused("blk bench d 0"),
            "blk bench: MIB 0 is out of range (1 to 4096)"
        );
        assert_eq!(
            refused("blk bench d 0x"),
            "blk bench: MIB \"0x\" is not a number"
        );
        assert_eq!(refused("blk write d"), "blk: unexpected argument \"write\"");
        assert_eq!(
            refused("blk read d 99999999999999999999 1"),
            "blk read: LBA \"99999999999999999999\" is not a number"
        );
    }

    #[test]
    fn every_command_in_help_parses() {
        for (usage, _) in COMMANDS {
            let line: String = usage
                .split(' ')
                .map(|word| match word {
                    "DEV" | "[DEVICE]" => "d",
                    "LBA" | "SEED" => "0",
                    "COUNT" | "MIB" => "1",
                    "PATH" => "/",
                    "LEVEL" => "info",
                    word => word,
                })
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                matches!(Command::parse(&line), Ok(Some(_))),
                "{usage}: {line}"
            );
        }
    }
}
