//! QEMU's fw_cfg device, read through its I/O ports (x86: selector 0x510, data 0x511):
//! how the host hands the agent its per-VM secret without putting it on a command line
//! or in an image other users can read. No kernel driver is needed (microvm has no
//! ACPI to find one by); PID 1 has the I/O privilege.

use stockade_runtime::{Error, Result};

const PORT_SELECTOR: u16 = 0x510;
const PORT_DATA: u16 = 0x511;
const KEY_SIGNATURE: u16 = 0x00;
const KEY_FILE_DIR: u16 = 0x19;
/// A directory entry: size (be32), select (be16), reserved (u16), name (56 bytes).
const ENTRY_LEN: usize = 64;
const NAME_LEN: usize = 56;
/// Nothing the agent reads is larger.
const MAX_FILE: u32 = 4096;

fn select(key: u16) {
    // SAFETY: a 16-bit write to the fw_cfg selector port, which ioperm granted.
    unsafe {
        std::arch::asm!("out dx, ax", in("dx") PORT_SELECTOR, in("ax") key, options(nomem, nostack));
    }
}

fn read_bytes(out: &mut [u8]) {
    for b in out.iter_mut() {
        let v: u8;
        // SAFETY: an 8-bit read from the fw_cfg data port, which ioperm granted.
        unsafe {
            std::arch::asm!("in al, dx", in("dx") PORT_DATA, out("al") v, options(nomem, nostack));
        }
        *b = v;
    }
}

/// The contents of the fw_cfg file `name`.
pub fn read_file(name: &str) -> Result<Vec<u8>> {
    // SAFETY: ioperm takes a port range and a flag; no memory is involved.
    if unsafe { libc::ioperm(PORT_SELECTOR as libc::c_ulong, 2, 1) } != 0 {
        return Err(Error::io("ioperm fw_cfg")(std::io::Error::last_os_error()));
    }
    select(KEY_SIGNATURE);
    let mut sig = [0u8; 4];
    read_bytes(&mut sig);
    if &sig != b"QEMU" {
        return Err(Error::NotFound("no fw_cfg device".into()));
    }
    select(KEY_FILE_DIR);
    let mut count = [0u8; 4];
    read_bytes(&mut count);
    let count = u32::from_be_bytes(count).min(4096);
    for _ in 0..count {
        let mut e = [0u8; ENTRY_LEN];
        read_bytes(&mut e);
        let size = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
        let key = u16::from_be_bytes([e[4], e[5]]);
        let raw = &e[8..8 + NAME_LEN];
        let end = raw.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
        if &raw[..end] != name.as_bytes() {
            continue;
        }
        if size > MAX_FILE {
            return Err(Error::InvalidArgument(format!(
                "fw_cfg {name}: {size} bytes"
            )));
        }
        select(key);
        let mut data = vec![0u8; size as usize];
        read_bytes(&mut data);
        return Ok(data);
    }
    Err(Error::NotFound(format!("fw_cfg file {name}")))
}
