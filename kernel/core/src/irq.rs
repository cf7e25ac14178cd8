//! Interrupt dispatch from the IRQ vector.

/// Handles a pending interrupt; `false` when nothing could handle it, which
/// the exception path reports as fatal. No interrupt controller is driven
/// yet, so every IRQ is unexpected.
pub fn dispatch() -> bool {
    false
}
