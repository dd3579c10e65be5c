//! What the agent reports about its machine in each heartbeat (optional
//! fields of the heartbeat body, copied into the Node's `status.nodeInfo`),
//! read once at start from the places the kubelet reads them.

use mube_apis::heartbeat::SystemInfo;

/// The machine's architecture and OS as Kubernetes names them (Go's
/// GOARCH/GOOS), its kernel, OS image, boot ID and machine ID. A value that
/// cannot be read is left out, never guessed.
pub fn info() -> SystemInfo {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    SystemInfo {
        architecture: Some(go_arch(std::env::consts::ARCH).to_string()),
        operating_system: Some(std::env::consts::OS.to_string()),
        kernel_version: read("/proc/sys/kernel/osrelease"),
        os_image: read("/etc/os-release").and_then(|text| pretty_name(&text)),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        machine_id: read("/etc/machine-id").or_else(|| read("/var/lib/dbus/machine-id")),
    }
}

/// Rust's architecture names in Go's spelling, which Kubernetes uses.
fn go_arch(rust: &str) -> &str {
    match rust {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// `PRETTY_NAME` from os-release, unquoted.
fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?.trim();
        Some(value.trim_matches('"').trim_matches('\'').to_string()).filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_pretty_name() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(pretty_name("ID=x\n"), None);
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("riscv64"), "riscv64");
    }

    #[test]
    fn reads_this_machine() {
        let info = info();
        assert_eq!(info.operating_system.as_deref(), Some(std::env::consts::OS));
        #[cfg(target_os = "linux")]
        assert!(info.kernel_version.is_some() && info.boot_id.is_some());
    }
}
