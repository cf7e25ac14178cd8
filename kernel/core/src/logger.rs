//! The `log` facade on the console. Info lines are printed as they are (they
//! carry their own `subsystem:` prefix); other levels are marked.

use crate::bootargs::LogLevel;

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let marker = match record.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            log::Level::Info => "",
            log::Level::Debug => "debug: ",
            log::Level::Trace => "trace: ",
        };
        crate::console::write_line(format_args!("{marker}{}", record.args()));
    }

    fn flush(&self) {}
}

/// Installs the console logger at `level`. Called once, on the boot CPU,
/// before anything else logs.
pub fn init(level: LogLevel) {
    // SAFETY: called once at boot on the only running CPU with interrupts
    // masked, so nothing races with the store; the racy setter is used
    // because the MMU may still be off, where exclusive load/store pairs
    // (which the atomic setter needs) are not guaranteed to work.
    unsafe { log::set_logger_racy(&LOGGER) }.unwrap_or(());
    let filter = match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    };
    // SAFETY: as above: single CPU, before any concurrent use of the logger.
    unsafe { log::set_max_level_racy(filter) };
}
