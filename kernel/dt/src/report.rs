//! The plan made visible: console lines for the kernel, a table for people
//! (`Display`) and JSON for tools. Formats are documented on the crate.

use alloc::string::String;
use core::fmt::{self, Write};

use crate::error::NodeError;
use crate::plan::{Placement, Plan, ReservedRegion};
use crate::range::AddrRange;

/// One line of the plan on the boot console (see the crate documentation
/// for the exact format).
#[derive(Clone, Copy, Debug)]
pub enum ConsoleLine<'p> {
    /// `mem: bank BASE size=SIZE`
    Bank(AddrRange),
    /// `mem: memreserve BASE size=SIZE`
    MemReserve(AddrRange),
    /// `mem: reserved PATH base=BASE size=SIZE ...`
    Reserved(&'p ReservedRegion),
    /// `mem: linear BASE size=SIZE`
    Linear(AddrRange),
    /// `mem: error PATH: REASON`
    Error(&'p NodeError),
    /// `mem: summary banks=N memreserve=N reserved=N linear=N errors=N`
    Summary(&'p Plan),
}

impl Plan {
    /// The plan as console lines, in this order: banks, memreserve entries,
    /// reserved regions, linear-map ranges (each sorted by base), errors,
    /// then one summary line.
    pub fn console_lines(&self) -> impl Iterator<Item = ConsoleLine<'_>> {
        let banks = self.memory.iter().copied().map(ConsoleLine::Bank);
        let memreserve = self.memreserve.iter().copied().map(ConsoleLine::MemReserve);
        let reserved = self.reserved.iter().map(ConsoleLine::Reserved);
        let linear = self.linear_map.iter().copied().map(ConsoleLine::Linear);
        let errors = self.errors.iter().map(ConsoleLine::Error);
        banks
            .chain(memreserve)
            .chain(reserved)
            .chain(linear)
            .chain(errors)
            .chain([ConsoleLine::Summary(self)])
    }

    /// The plan as one line of JSON (see the crate documentation).
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) -> fmt::Result {
        let ranges = |out: &mut String, key: &str, ranges: &[AddrRange]| -> fmt::Result {
            write!(out, "\"{key}\":[")?;
            for (i, r) in ranges.iter().enumerate() {
                write!(
                    out,
                    "{}{{\"base\":\"{:#x}\",\"size\":\"{:#x}\"}}",
                    comma(i),
                    r.base(),
                    r.size()
                )?;
            }
            out.write_char(']')
        };
        out.write_char('{')?;
        ranges(out, "memory", &self.memory)?;
        out.write_char(',')?;
        ranges(out, "memreserve", &self.memreserve)?;
        out.write_str(",\"reserved\":[")?;
        for (i, region) in self.reserved.iter().enumerate() {
            write!(
                out,
                "{}{{\"path\":{},\"base\":\"{:#x}\",\"size\":\"{:#x}\",\"compatible\":[",
                comma(i),
                Json(&region.path),
                region.range.base(),
                region.range.size()
            )?;
            for (j, compatible) in region.compatible.iter().enumerate() {
                write!(out, "{}{}", comma(j), Json(compatible))?;
            }
            write!(
                out,
                "],\"no_map\":{},\"reusable\":{},\"dynamic\":{},\"in_memory\":{},\"users\":[",
                region.no_map,
                region.reusable,
                region.placement != Placement::Static,
                region.in_memory
            )?;
            for (j, user) in region.users.iter().enumerate() {
                write!(out, "{}{}", comma(j), Json(&user.path))?;
            }
            out.write_str("]}")?;
        }
        out.write_str("],")?;
        ranges(out, "linear_map", &self.linear_map)?;
        out.write_str(",\"errors\":[")?;
        for (i, error) in self.errors.iter().enumerate() {
            let reason = alloc::format!("{}", error.kind);
            write!(
                out,
                "{}{{\"path\":{},\"reason\":{}}}",
                comma(i),
                Json(&error.path),
                Json(&reason)
            )?;
        }
        out.write_str("]}")
    }
}

fn comma(index: usize) -> &'static str {
    if index == 0 { "" } else { "," }
}

/// A JSON string literal.
struct Json<'s>(&'s str);

impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

/// Device-tree text on one console line: control characters (which would
/// break the line) as `\xNN`, and spaces too when `keep_spaces` is false
/// (a field must not split).
struct Text<'s> {
    text: &'s str,
    keep_spaces: bool,
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.text.chars() {
            if c.is_control() || (c == ' ' && !self.keep_spaces) {
                write!(f, "\\x{:02x}", c as u32)?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// A field of a console line.
fn field(text: &str) -> Text<'_> {
    Text {
        text,
        keep_spaces: false,
    }
}

/// A comma-separated list of fields, or `-` when empty.
struct List<I>(I);

impl<'s, I: Iterator<Item = &'s str> + Clone> fmt::Display for List<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = self.0.clone().peekable();
        if items.peek().is_none() {
            return f.write_char('-');
        }
        for (i, item) in items.enumerate() {
            write!(f, "{}{}", comma(i), field(item))?;
        }
        Ok(())
    }
}

fn flags(region: &ReservedRegion) -> impl Iterator<Item = &'static str> + Clone {
    let placement = match region.placement {
        Placement::Static => "static",
        Placement::Dynamic { .. } => "dynamic",
    };
    let optional = [
        (region.no_map, "no-map"),
        (region.reusable, "reusable"),
        (region.dma_default, "dma-default"),
        (!region.in_memory, "outside-memory"),
    ];
    [placement].into_iter().chain(
        optional
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name),
    )
}

impl fmt::Display for ConsoleLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bank(r) => write!(f, "mem: bank {:#x} size={:#x}", r.base(), r.size()),
            Self::MemReserve(r) => {
                write!(f, "mem: memreserve {:#x} size={:#x}", r.base(), r.size())
            }
            Self::Linear(r) => write!(f, "mem: linear {:#x} size={:#x}", r.base(), r.size()),
            Self::Reserved(region) => {
                write!(
                    f,
                    "mem: reserved {} base={:#x} size={:#x}",
                    field(&region.path),
                    region.range.base(),
                    region.range.size()
                )?;
                for flag in flags(region) {
                    write!(f, " {flag}")?;
                }
                let compatible = region.compatible.iter().map(String::as_str);
                let users = region.users.iter().map(|u| u.path.as_str());
                write!(f, " compatible={} users={}", List(compatible), List(users))
            }
            Self::Error(error) => {
                let reason = alloc::format!("{}", error.kind);
                write!(
                    f,
                    "mem: error {}: {}",
                    field(&error.path),
                    Text {
                        text: &reason,
                        keep_spaces: true
                    }
                )
            }
            Self::Summary(plan) => write!(
                f,
                "mem: summary banks={} memreserve={} reserved={} linear={} errors={}",
                plan.memory.len(),
                plan.memreserve.len(),
                plan.reserved.len(),
                plan.linear_map.len(),
                plan.errors.len()
            ),
        }
    }
}

/// A size in the largest binary unit that divides it exactly.
struct Human(u64);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        match units
            .iter()
            .find(|(shift, _)| self.0 != 0 && self.0.is_multiple_of(1 << shift))
        {
            Some((shift, unit)) => write!(f, "{} {unit}", self.0 >> shift),
            None => write!(f, "{} B", self.0),
        }
    }
}

/// `base`, `end` and `size` columns.
struct Columns(AddrRange);

impl fmt::Display for Columns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let base = alloc::format!("{:#x}", r.base());
        let end = alloc::format!("{:#x}", r.end());
        let size = alloc::format!("{:#x}", r.size());
        let human = alloc::format!("{}", Human(r.size()));
        write!(f, "{base:<20}{end:<20}{size:<14}{human:<10}")
    }
}

/// The plan as a table for people (`cargo xtask dt FILE.dtb`).
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = alloc::format!("  {:<20}{:<20}{:<14}{:<10}", "base", "end", "size", "");
        let section =
            |f: &mut fmt::Formatter<'_>, title: &str, ranges: &[AddrRange]| -> fmt::Result {
                writeln!(f, "{title} ({})", ranges.len())?;
                if !ranges.is_empty() {
                    writeln!(f, "{}", header.trim_end())?;
                }
                for r in ranges {
                    writeln!(f, "  {}", alloc::format!("{}", Columns(*r)).trim_end())?;
                }
                writeln!(f)
            };
        section(f, "memory banks, merged", &self.memory)?;
        section(f, "/memreserve/ entries", &self.memreserve)?;
        writeln!(f, "reserved regions ({})", self.reserved.len())?;
        if !self.reserved.is_empty() {
            writeln!(f, "{}flags", header)?;
        }
        for region in &self.reserved {
            let flags: alloc::vec::Vec<&str> = flags(region).collect();
            writeln!(f, "  {}{}", Columns(region.range), flags.join(","))?;
            writeln!(f, "      path        {}", region.path)?;
            if !region.compatible.is_empty() {
                writeln!(f, "      compatible  {}", region.compatible.join(", "))?;
            }
            for user in &region.users {
                match &user.name {
                    Some(name) => writeln!(f, "      user        {} ({name})", user.path)?,
                    None => writeln!(f, "      user        {}", user.path)?,
                }
            }
        }
        writeln!(f)?;
        section(f, "linear map", &self.linear_map)?;
        writeln!(f, "errors ({})", self.errors.len())?;
        for error in &self.errors {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}
