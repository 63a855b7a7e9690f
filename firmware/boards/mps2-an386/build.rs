//! Puts memory.x and device.x where the linker finds them and links with
//! cortex-m-rt's link.x (here rather than in .cargo/config.toml, so that the
//! link works from any folder and with any cargo).
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("write memory.x");
    // cortex-m-rt's link.x includes device.x when its `device` feature is on:
    // a handler of src/vectors.rs that the firmware does not define falls
    // back to DefaultHandler.
    let device_x = ["TIMER0", "TIMER1", "ETHERNET"]
        .iter()
        .map(|name| format!("PROVIDE({name} = DefaultHandler);\n"))
        .collect::<String>();
    fs::write(out.join("device.x"), device_x).expect("write device.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=--nmagic");
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
}
