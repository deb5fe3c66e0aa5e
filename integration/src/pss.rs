//! PSS measurement: the host memory a VM sandbox's processes cost.

use std::process::Command;

use crate::command::run;

/// PSS in KiB from `/proc/<pid>/smaps`: (total, guest RAM, TCG translation cache).
/// Guest RAM is QEMU's memfd memory backend; the TCG cache is its anonymous
/// read-write-execute mapping (absent under KVM).
pub fn pss_kib(pid: &str) -> (u64, u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut guest, mut tcg) = (0, 0, 0);
    let mut kind = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            let perms = words.next().unwrap_or("");
            let named = line.split_whitespace().count() > 5;
            kind = if line.contains("memfd:memory-backend") {
                1
            } else if perms == "rwxp" && !named {
                2
            } else {
                0
            };
            continue;
        }
        if let Some(v) = line.strip_prefix("Pss:") {
            let kib: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            total += kib;
            match kind {
                1 => guest += kib,
                2 => tcg += kib,
                _ => {}
            }
        }
    }
    (total, guest, tcg)
}

pub fn pids(pattern: &str) -> Vec<String> {
    run(Command::new("pgrep").args(["-f", pattern]))
        .stdout
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The host memory (PSS, KiB) of VM sandboxes' processes, by component.
#[derive(Debug, Default, Clone, Copy)]
pub struct SandboxMemory {
    pub qemu: u64,
    pub virtiofsd: u64,
    pub vsock: u64,
    pub shim: u64,
    /// Of the above: guest RAM the guests touched (QEMU's memory backend).
    pub guest_ram: u64,
    /// Of the above: QEMU's TCG translation caches (absent under KVM).
    pub tcg_cache: u64,
}

impl SandboxMemory {
    pub fn total(&self) -> u64 {
        self.qemu + self.virtiofsd + self.vsock + self.shim
    }

    /// What the host pays beyond guest RAM, without the TCG cache (what KVM costs).
    pub fn overhead(&self) -> u64 {
        self.total() - self.guest_ram - self.tcg_cache
    }
}

/// The PSS of every VM sandbox's host processes (qemu, virtiofsd, the vsock backend)
/// working in Stockade state dir `state`, and of the shims matching `shim_pattern`.
pub fn sandbox_memory(state: &str, shim_pattern: &str) -> SandboxMemory {
    let mut m = SandboxMemory::default();
    for (slot, pattern) in [
        (0, format!("qemu-system.*{state}")),
        (1, format!("virtiofsd.*{state}")),
        // Its argv[0] names its dir, before its name.
        (2, format!("{state}.*vhost-device-vsock")),
        (3, shim_pattern.to_string()),
    ] {
        for p in pids(&pattern) {
            let (t, g, c) = pss_kib(&p);
            *[&mut m.qemu, &mut m.virtiofsd, &mut m.vsock, &mut m.shim][slot] += t;
            m.guest_ram += g;
            m.tcg_cache += c;
        }
    }
    m
}

/// Print the PSS of one VM sandbox's host processes (qemu, virtiofsd, the vsock backend,
/// and the shim matching `shim_pattern`) working in Stockade state dir `state`, and the
/// host overhead outside guest RAM. Returns that overhead without the TCG translation
/// cache (what KVM would cost), in KiB.
pub fn report_sandbox_memory(state: &str, shim_pattern: &str, guest_mib: u32) -> u64 {
    let m = sandbox_memory(state, shim_pattern);
    let mib = |k: u64| k as f64 / 1024.0;
    for (name, kib) in [
        ("qemu", m.qemu),
        ("virtiofsd", m.virtiofsd),
        ("vhost-device-vsock", m.vsock),
        ("shim", m.shim),
    ] {
        println!("  {name:<20} PSS {:>7.1} MiB", mib(kib));
    }
    println!(
        "  one sandbox ({guest_mib} MiB guest): PSS {:.1} MiB in all, of which guest RAM touched {:.1} MiB",
        mib(m.total()),
        mib(m.guest_ram)
    );
    println!(
        "  host overhead outside guest RAM: {:.1} MiB; without the TCG translation cache ({:.1} MiB, absent under KVM): {:.1} MiB (target <= 40 MiB)",
        mib(m.total() - m.guest_ram),
        mib(m.tcg_cache),
        mib(m.overhead())
    );
    m.overhead()
}
