//! The external-interrupt part of the vector table (32 lines on AN385/AN386),
//! as a device crate (PAC) would provide it to cortex-m-rt. Only the lines
//! this firmware uses have handlers; the rest go to DefaultHandler.

/// A vector table entry.
#[derive(Clone, Copy)]
pub union Vector {
    handler: unsafe extern "C" fn(),
    _reserved: usize,
}

extern "C" {
    fn DefaultHandler();
    fn TIMER0();
    fn TIMER1();
    fn ETHERNET();
}

/// IRQ numbers (AN386 application note; QEMU's hw/arm/mps2.c).
pub const TIMER0_IRQ: u16 = 8;
pub const TIMER1_IRQ: u16 = 9;
pub const ETHERNET_IRQ: u16 = 13;
const LINES: usize = 32;

#[unsafe(link_section = ".vector_table.interrupts")]
#[unsafe(no_mangle)]
static __INTERRUPTS: [Vector; LINES] = {
    let mut table = [Vector { handler: DefaultHandler }; LINES];
    table[TIMER0_IRQ as usize] = Vector { handler: TIMER0 };
    table[TIMER1_IRQ as usize] = Vector { handler: TIMER1 };
    table[ETHERNET_IRQ as usize] = Vector { handler: ETHERNET };
    table
};
