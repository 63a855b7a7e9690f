//! A QR code in the terminal, so a phone's camera can open an address printed by the aggregator
//! (`aggregator qr URL`, and `--lan`'s start-up message).

use std::fmt::Write as _;

use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

/// Set foreground black and background white, and reset: a camera needs dark modules on a light
/// ground, and a terminal's own colours may be either way round.
const BLACK_ON_WHITE: &str = "\x1b[38;5;16;48;5;231m";
const RESET: &str = "\x1b[0m";

/// `text` as a QR code drawn with half blocks (two rows of modules per line), with its quiet
/// zone. `colours`: paint it black on white with ANSI codes (for a terminal); without them, the
/// blocks are the dark modules, right on a light terminal.
pub fn render(text: &str, colours: bool) -> anyhow::Result<String> {
    // Level M: survives a little glare on a screen, and a URL of 60 characters stays a small
    // version (33 modules square).
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|e| anyhow::anyhow!("cannot make a QR code of {} bytes: {e}", text.len()))?;
    let art = code.render::<Dense1x2>().quiet_zone(true).build();
    if !colours {
        return Ok(art);
    }
    let mut out = String::with_capacity(art.len() * 2);
    for line in art.lines() {
        let _ = writeln!(out, "{BLACK_ON_WHITE}{line}{RESET}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_makes_a_square_with_a_quiet_zone() {
        let art = render("https://192.168.1.20:8443/", false).unwrap();
        let lines: Vec<&str> = art.lines().collect();
        let width = lines[0].chars().count();
        // Version 2 (25 modules) plus a 4-module quiet zone each side; two modules per line.
        assert_eq!(width, 33);
        assert_eq!(lines.len(), 33_usize.div_ceil(2));
        assert!(lines.iter().all(|l| l.chars().count() == width));
        // The quiet zone is blank; the finder pattern's top edge is solid.
        assert!(lines[0].chars().all(|c| c == ' '));
        assert!(lines[2].chars().skip(4).take(7).all(|c| c != ' '), "{}", lines[2]);
    }

    #[test]
    fn colours_wrap_every_line() {
        let art = render("x", true).unwrap();
        assert!(art.lines().all(|l| l.starts_with(BLACK_ON_WHITE) && l.ends_with(RESET)));
    }
}
