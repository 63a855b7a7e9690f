//! The provisioning block: per-device data written at flash time, not built
//! into the image.
//!
//! Each board's `memory.x` keeps a region out of the linker's `FLASH` and
//! defines two symbols around the part exposed to the firmware:
//! `__holdfast_prov_start` and `__holdfast_prov_end` (16 KiB on every board).
//! Nothing in the image is placed there, so flashing a new image leaves the
//! block as it was. Its format belongs to the gateway core; this module only
//! hands out the bytes. An unprovisioned block reads as all 0x00 (QEMU's RAM)
//! or all 0xFF (erased STM32 flash): the core must recognise both.

/// Size of the provisioning block on every board, in bytes.
pub const SIZE: usize = 16 * 1024;

extern "C" {
    static __holdfast_prov_start: u8;
    static __holdfast_prov_end: u8;
}

/// The provisioning block, as the linker script places it.
pub fn block() -> &'static [u8] {
    // SAFETY: the two symbols come from the board's memory.x and bound a
    // region of flash that the linker never allocates, so no Rust object
    // aliases it, and the firmware never writes it (it is read-only for the
    // whole run). Only their addresses are used.
    unsafe {
        let start = core::ptr::addr_of!(__holdfast_prov_start);
        let end = core::ptr::addr_of!(__holdfast_prov_end);
        let len = (end as usize).saturating_sub(start as usize);
        core::slice::from_raw_parts(start, len)
    }
}

/// True when the block is blank: all 0x00 or all 0xFF (never written).
pub fn is_blank(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0x00) || block.iter().all(|&b| b == 0xFF)
}

/// SHA-256 of the block, for the boot log (lets a test check that the
/// bytes it loaded are the bytes the firmware sees).
pub fn digest(block: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(block).into()
}

/// Logs where the block is, its size, whether it is blank and the first
/// 8 bytes of its SHA-256 (as 16 hex digits).
pub fn log_summary(block: &[u8]) {
    let d = digest(block);
    log::info!(
        "provisioning block at {:#010x}, {} bytes, {}, sha256 {:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        block.as_ptr() as usize,
        block.len(),
        if is_blank(block) { "blank" } else { "provisioned" },
        d[0],
        d[1],
        d[2],
        d[3],
        d[4],
        d[5],
        d[6],
        d[7]
    );
}
