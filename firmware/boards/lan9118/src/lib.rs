//! An `embassy-net-driver` for the SMSC LAN9118 Ethernet controller, as QEMU
//! emulates it on the mps2-an385/an386/an500 boards (`-nic user,model=lan9118`).
//!
//! The reference for what is implemented is QEMU's `hw/net/lan9118.c` and the
//! LAN9118 datasheet. The controller is driven through its programmed-I/O
//! FIFOs (no DMA): a frame is received by popping one word from the RX status
//! FIFO (it gives the length) and then that many bytes from the RX data FIFO;
//! a frame is sent by pushing two command words and the data into the TX data
//! FIFO, QEMU sends it as soon as the last word arrives.
//!
//! Receive is interrupt driven: the controller raises its interrupt when the
//! RX status FIFO holds a frame (and on PHY link events); the board's handler
//! for that interrupt calls [`on_interrupt`], which acknowledges it and wakes
//! the network task. An idle board therefore sleeps.
//!
//! Nothing here panics on what arrives from the wire: frames with an error
//! flag, a length out of range, or that failed the address filter are read
//! out of the FIFO and dropped.
#![no_std]

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;

/// Ethernet MTU handed to embassy-net: the largest frame without its FCS
/// (14-byte header + 1500 bytes of payload).
pub const MTU: usize = 1514;
/// Size of the receive and transmit staging buffers. QEMU's receive path
/// rejects frames of 2048 bytes and more; anything above this is dropped.
pub const FRAME_BUF: usize = 1536;
/// Full-size frames the RX data FIFO holds (QEMU: 2640 words = 10,560
/// bytes, about 1,520 bytes a frame with its FCS). Given to embassy-net as
/// the burst size, so that smoltcp advertises no TCP window larger than the
/// FIFO can take in one go.
pub const RX_BURST_FRAMES: usize = 6;
/// Upper bound on spins while waiting for a busy bit (MAC CSR, MII, reset).
/// QEMU never sets busy bits; real silicon clears them in microseconds.
pub const BUSY_SPINS: u32 = 100_000;

// System control and status registers (offsets from the base address).
const RX_DATA_FIFO: usize = 0x00;
const TX_DATA_FIFO: usize = 0x20;
const RX_STATUS_FIFO: usize = 0x40;
const TX_STATUS_FIFO: usize = 0x48;
const ID_REV: usize = 0x50;
const IRQ_CFG: usize = 0x54;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5c;
const BYTE_TEST: usize = 0x64;
const FIFO_INT: usize = 0x68;
const RX_CFG: usize = 0x6c;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7c;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const MAC_CSR_CMD: usize = 0xa4;
const MAC_CSR_DATA: usize = 0xa8;

const BYTE_TEST_VALUE: u32 = 0x8765_4321;

// IRQ_CFG: enable the pin, push-pull, active high. QEMU inverts the line
// unless both TYPE and POL are set, so both are needed on the emulator.
const IRQ_CFG_EN: u32 = 1 << 8;
const IRQ_CFG_POL: u32 = 1 << 4;
const IRQ_CFG_TYPE: u32 = 1 << 0;

// INT_STS / INT_EN bits used here.
const INT_RSFL: u32 = 1 << 3; // RX status FIFO above its level (FIFO_INT[7:0])
const INT_PHY: u32 = 1 << 18; // PHY interrupt (link events)

const HW_CFG_SRST: u32 = 1 << 0;
const PMT_CTRL_READY: u32 = 1 << 0;
/// FIFO_INT: TX data available level 0x48 (the reset value), RX status level
/// 0, so that a single received frame raises RSFL.
const FIFO_INT_VALUE: u32 = 0x4800_0000;
/// TX_CFG: transmitter on, and allow the TX status FIFO to overrun (the
/// status words carry nothing this driver needs; they are popped anyway).
const TX_CFG_VALUE: u32 = (1 << 1) | (1 << 2);

// TX command words.
const TX_CMD_A_FIRST: u32 = 1 << 13;
const TX_CMD_A_LAST: u32 = 1 << 12;

// RX status word.
const RX_STS_FILTER_FAIL: u32 = 1 << 30;
const RX_STS_ERROR: u32 = 1 << 15;
const FCS_LEN: usize = 4;
const MIN_FRAME: usize = 14;

// MAC CSR indirect registers.
const MAC_CSR_BUSY: u32 = 1 << 31;
const MAC_CSR_READ: u32 = 1 << 30;
const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;
const MAC_MII_ACC: u32 = 6;
const MAC_MII_DATA: u32 = 7;
/// MAC_CR: receive and transmit on, full duplex. Promiscuous mode (the reset
/// value) is off, so only frames for our address and broadcasts arrive.
const MAC_CR_VALUE: u32 = (1 << 2) | (1 << 3) | (1 << 20);

// MII access to the internal PHY (address 1).
const MII_PHY_ADDR: u32 = 1 << 11;
const MII_WRITE: u32 = 1 << 1;
const MII_BUSY: u32 = 1 << 0;
const PHY_BCR: u32 = 0;
const PHY_BSR: u32 = 1;
const PHY_INT_SRC: u32 = 29;
const PHY_INT_MASK: u32 = 30;
const PHY_BCR_AUTONEG: u32 = (1 << 12) | (1 << 9); // enable + restart
const PHY_BSR_LINK: u32 = 1 << 2;
/// PHY interrupt sources: link down, auto-negotiation complete.
const PHY_INT_LINK_EVENTS: u32 = (1 << 4) | (1 << 6);

/// Woken by [`on_interrupt`]; embassy-net registers the same waker from
/// `receive`, `transmit` and `link_state`, so one is enough.
static WAKER: AtomicWaker = AtomicWaker::new();
/// Set by [`on_interrupt`] on a PHY event: `link_state` re-reads the PHY.
static PHY_EVENT: AtomicBool = AtomicBool::new(true);

/// Why the controller could not be brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// BYTE_TEST did not read 0x87654321: no LAN9118 at that address.
    NotFound(u32),
    /// A busy bit stayed set for [`BUSY_SPINS`] reads.
    Timeout,
    /// No MAC address was given and the controller has none (EEPROM empty).
    NoMacAddress,
}

/// Register access at a fixed base address.
#[derive(Clone, Copy)]
struct Regs(usize);

impl Regs {
    fn read(self, offset: usize) -> u32 {
        // SAFETY: `Lan9118::new`'s caller promised that `self.0` is the base
        // of a LAN9118 register block; offsets are the datasheet's.
        unsafe { read_volatile((self.0 + offset) as *const u32) }
    }

    fn write(self, offset: usize, value: u32) {
        // SAFETY: as in `read`.
        unsafe { write_volatile((self.0 + offset) as *mut u32, value) }
    }

    fn wait_clear(self, offset: usize, mask: u32) -> Result<(), Error> {
        for _ in 0..BUSY_SPINS {
            if self.read(offset) & mask == 0 {
                return Ok(());
            }
        }
        Err(Error::Timeout)
    }

    fn mac_read(self, reg: u32) -> Result<u32, Error> {
        self.wait_clear(MAC_CSR_CMD, MAC_CSR_BUSY)?;
        self.write(MAC_CSR_CMD, MAC_CSR_BUSY | MAC_CSR_READ | reg);
        self.wait_clear(MAC_CSR_CMD, MAC_CSR_BUSY)?;
        Ok(self.read(MAC_CSR_DATA))
    }

    fn mac_write(self, reg: u32, value: u32) -> Result<(), Error> {
        self.wait_clear(MAC_CSR_CMD, MAC_CSR_BUSY)?;
        self.write(MAC_CSR_DATA, value);
        self.write(MAC_CSR_CMD, MAC_CSR_BUSY | reg);
        self.wait_clear(MAC_CSR_CMD, MAC_CSR_BUSY)
    }

    fn mii_wait(self) -> Result<(), Error> {
        for _ in 0..BUSY_SPINS {
            if self.mac_read(MAC_MII_ACC)? & MII_BUSY == 0 {
                return Ok(());
            }
        }
        Err(Error::Timeout)
    }

    fn phy_read(self, reg: u32) -> Result<u16, Error> {
        self.mii_wait()?;
        self.mac_write(MAC_MII_ACC, MII_PHY_ADDR | (reg << 6) | MII_BUSY)?;
        self.mii_wait()?;
        Ok(self.mac_read(MAC_MII_DATA)? as u16)
    }

    fn phy_write(self, reg: u32, value: u16) -> Result<(), Error> {
        self.mii_wait()?;
        self.mac_write(MAC_MII_DATA, u32::from(value))?;
        self.mac_write(MAC_MII_ACC, MII_PHY_ADDR | (reg << 6) | MII_WRITE | MII_BUSY)?;
        self.mii_wait()
    }

    /// Reads `words` words from the RX data FIFO into `buf` (bytes past its
    /// end, such as the FCS, are read and discarded).
    fn read_frame(self, buf: &mut [u8], words: usize) {
        for i in 0..words {
            let word = self.read(RX_DATA_FIFO).to_le_bytes();
            let at = i * 4;
            if at < buf.len() {
                let n = (buf.len() - at).min(4);
                buf[at..at + n].copy_from_slice(&word[..n]);
            }
        }
    }
}

/// Acknowledges the controller's interrupt and wakes the network task.
///
/// Call it from the board's handler for the LAN9118 interrupt line (IRQ 13 on
/// mps2-an385/an386). It writes back the interrupt status bits it read
/// (they are write-one-to-clear), so the line drops until the next event.
///
/// # Safety
/// `base` must be the base address of the LAN9118 registers.
pub unsafe fn on_interrupt(base: usize) {
    let regs = Regs(base);
    let status = regs.read(INT_STS);
    regs.write(INT_STS, status);
    if status & INT_PHY != 0 {
        PHY_EVENT.store(true, Ordering::Release);
    }
    WAKER.wake();
}

/// The driver. Give it to `embassy_net::new`.
pub struct Lan9118 {
    regs: Regs,
    mac: [u8; 6],
    link_up: bool,
    rx_buf: [u8; FRAME_BUF],
    tx_buf: [u8; FRAME_BUF],
}

impl Lan9118 {
    /// Resets and configures the controller at `base`, and enables its
    /// interrupt output (the board enables the line in its NVIC afterwards).
    ///
    /// The MAC address is `mac` when given (a provisioned one), else the one
    /// the controller loaded from its EEPROM (QEMU: `-nic ...,mac=`, by
    /// default 52:54:00:12:34:56).
    ///
    /// # Safety
    /// `base` must be the base address of a LAN9118 register block, owned by
    /// this driver alone.
    pub unsafe fn new(base: usize, mac: Option<[u8; 6]>) -> Result<Self, Error> {
        let regs = Regs(base);
        let test = regs.read(BYTE_TEST);
        if test != BYTE_TEST_VALUE {
            return Err(Error::NotFound(test));
        }
        regs.write(HW_CFG, HW_CFG_SRST);
        regs.wait_clear(HW_CFG, HW_CFG_SRST)?;
        for _ in 0..BUSY_SPINS {
            if regs.read(PMT_CTRL) & PMT_CTRL_READY != 0 {
                break;
            }
        }
        if regs.read(PMT_CTRL) & PMT_CTRL_READY == 0 {
            return Err(Error::Timeout);
        }
        log::debug!("lan9118: ID_REV {:08x}", regs.read(ID_REV));

        let mac = match mac {
            Some(mac) => {
                regs.mac_write(MAC_ADDRL, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]))?;
                regs.mac_write(MAC_ADDRH, u32::from(mac[4]) | (u32::from(mac[5]) << 8))?;
                mac
            }
            None => {
                let lo = regs.mac_read(MAC_ADDRL)?.to_le_bytes();
                let hi = regs.mac_read(MAC_ADDRH)?.to_le_bytes();
                [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]]
            }
        };
        if mac == [0; 6] || mac == [0xff; 6] || mac[0] & 1 != 0 {
            return Err(Error::NoMacAddress);
        }

        regs.write(FIFO_INT, FIFO_INT_VALUE);
        regs.write(RX_CFG, 0); // no offset, 4-byte end alignment
        regs.write(TX_CFG, TX_CFG_VALUE);
        regs.phy_write(PHY_BCR, PHY_BCR_AUTONEG as u16)?;
        regs.phy_write(PHY_INT_MASK, PHY_INT_LINK_EVENTS as u16)?;
        regs.mac_write(MAC_CR, MAC_CR_VALUE)?;

        regs.write(INT_STS, u32::MAX);
        regs.write(INT_EN, INT_RSFL | INT_PHY);
        regs.write(IRQ_CFG, IRQ_CFG_EN | IRQ_CFG_POL | IRQ_CFG_TYPE);
        PHY_EVENT.store(true, Ordering::Release);

        Ok(Self { regs, mac, link_up: false, rx_buf: [0; FRAME_BUF], tx_buf: [0; FRAME_BUF] })
    }

    /// The MAC address in use.
    pub fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    /// Pops frames until a good one is in `rx_buf`; returns its length.
    /// Bad frames are drained and dropped. Bounded by the number of frames
    /// the status FIFO held on entry.
    fn next_frame(&mut self) -> Option<usize> {
        let queued = (self.regs.read(RX_FIFO_INF) >> 16) & 0xff;
        for _ in 0..queued {
            let status = self.regs.read(RX_STATUS_FIFO);
            let len_with_fcs = ((status >> 16) & 0x3fff) as usize;
            let words = len_with_fcs.div_ceil(4);
            let len = len_with_fcs.saturating_sub(FCS_LEN);
            let bad = status & (RX_STS_ERROR | RX_STS_FILTER_FAIL) != 0
                || len < MIN_FRAME
                || len > self.rx_buf.len();
            if bad {
                log::debug!("lan9118: dropped frame, status {:08x}", status);
                self.regs.read_frame(&mut [], words);
                continue;
            }
            self.regs.read_frame(&mut self.rx_buf[..len], words);
            return Some(len);
        }
        None
    }

    /// Pops TX status words so that their FIFO never fills (bounded by its
    /// fill level).
    fn drain_tx_status(&self) {
        let used = (self.regs.read(TX_FIFO_INF) >> 16) & 0xff;
        for _ in 0..used {
            let _ = self.regs.read(TX_STATUS_FIFO);
        }
    }

    fn tx_space(&self) -> bool {
        // Free bytes in the TX data FIFO: the frame plus two command words
        // and alignment must fit. QEMU sends synchronously, so this only
        // matters on silicon.
        (self.regs.read(TX_FIFO_INF) & 0xffff) as usize >= FRAME_BUF + 8
    }
}

/// A received frame, already copied out of the controller.
pub struct RxToken<'a> {
    frame: &'a mut [u8],
}

/// Permission to send one frame.
pub struct TxToken<'a> {
    regs: Regs,
    buf: &'a mut [u8; FRAME_BUF],
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        f(self.frame)
    }
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // embassy-net never asks for more than the MTU; cut rather than panic.
        let len = len.min(FRAME_BUF);
        let r = f(&mut self.buf[..len]);
        let n = len as u32;
        self.regs.write(TX_DATA_FIFO, TX_CMD_A_FIRST | TX_CMD_A_LAST | n);
        self.regs.write(TX_DATA_FIFO, (n << 16) | n); // tag = length
        for chunk in self.buf[..len].chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            self.regs.write(TX_DATA_FIFO, u32::from_le_bytes(word));
        }
        r
    }
}

impl embassy_net_driver::Driver for Lan9118 {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, cx: &mut Context) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // Register before looking, so a frame that arrives in between still
        // wakes us through the interrupt.
        WAKER.register(cx.waker());
        self.drain_tx_status();
        if !self.tx_space() {
            cx.waker().wake_by_ref();
            return None;
        }
        let len = self.next_frame()?;
        let regs = self.regs;
        Some((RxToken { frame: &mut self.rx_buf[..len] }, TxToken { regs, buf: &mut self.tx_buf }))
    }

    fn transmit(&mut self, cx: &mut Context) -> Option<Self::TxToken<'_>> {
        self.drain_tx_status();
        if !self.tx_space() {
            // No TX-space interrupt is wired up (QEMU never runs out), so
            // retry on the next poll rather than wait for one.
            cx.waker().wake_by_ref();
            return None;
        }
        Some(TxToken { regs: self.regs, buf: &mut self.tx_buf })
    }

    fn link_state(&mut self, cx: &mut Context) -> LinkState {
        WAKER.register(cx.waker());
        if PHY_EVENT.swap(false, Ordering::AcqRel) {
            // Reading the PHY's interrupt source register acknowledges it;
            // the link bit latches low, so read the status twice.
            let _ = self.regs.phy_read(PHY_INT_SRC);
            let _ = self.regs.phy_read(PHY_BSR);
            match self.regs.phy_read(PHY_BSR) {
                Ok(bsr) => self.link_up = u32::from(bsr) & PHY_BSR_LINK != 0,
                Err(_) => PHY_EVENT.store(true, Ordering::Release), // try again next poll
            }
        }
        if self.link_up {
            LinkState::Up
        } else {
            LinkState::Down
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(RX_BURST_FRAMES);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
