//! What the sampler needs from the kernel's permission checks, and turning a refusal
//! into an error that says which capability is missing.

use crate::SamplerError;

/// Capability numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub(crate) fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// The capabilities missing for loading and attaching the sampler, given the effective
/// set: CAP_SYS_ADMIN covers everything; otherwise CAP_BPF and CAP_PERFMON are needed
/// (kernel ≥ 5.8).
pub(crate) fn missing_capabilities(cap_eff: u64) -> Vec<&'static str> {
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Fails early, with a clear message, when the process lacks the capabilities.
pub(crate) fn check() -> Result<(), SamplerError> {
    let Some(cap_eff) = effective_capabilities() else {
        return Ok(()); // cannot tell: let the kernel decide
    };
    let missing = missing_capabilities(cap_eff);
    if missing.is_empty() {
        return Ok(());
    }
    Err(SamplerError::PermissionDenied {
        operation: "starting the eBPF sampler",
        detail: format!("missing {} (or CAP_SYS_ADMIN)", missing.join(" and ")),
    })
}

/// Describes a permission refusal from the kernel: the missing capabilities, or what
/// else may refuse when the process has them all.
pub(crate) fn denial_detail() -> String {
    match effective_capabilities().map(missing_capabilities) {
        Some(missing) if !missing.is_empty() => format!("missing {} (or CAP_SYS_ADMIN)", missing.join(" and ")),
        Some(_) => "the process has CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), so something else refused: \
                    a seccomp filter, an LSM, kernel lockdown or kernel.perf_event_paranoid in a container"
            .to_owned(),
        None => "could not read the process's capabilities".to_owned(),
    }
}

/// The errno of the first `io::Error` in an error's source chain.
pub(crate) fn errno_in_chain(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        current = error.source();
    }
    None
}

/// An error and its sources, as one line.
pub(crate) fn chain_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut current = error.source();
    while let Some(source) = current {
        let text = source.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        current = source.source();
    }
    message
}

/// Whether an errno is a permission refusal.
pub(crate) fn is_permission_errno(errno: i32) -> bool {
    errno == nix::libc::EPERM || errno == nix::libc::EACCES
}

/// Converts an error from loading or attaching into a [`SamplerError`]: permission
/// refusals become [`SamplerError::PermissionDenied`], the rest `otherwise(message)`.
pub(crate) fn classify(
    operation: &'static str,
    error: &(dyn std::error::Error + 'static),
    otherwise: impl FnOnce(String) -> SamplerError,
) -> SamplerError {
    match errno_in_chain(error) {
        Some(errno) if is_permission_errno(errno) => SamplerError::PermissionDenied {
            operation,
            detail: denial_detail(),
        },
        _ => otherwise(chain_message(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\nCapBnd:\t0\n";
        assert_eq!(parse_cap_eff(status), Some(0x1fffeffffff));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn names_the_missing_capabilities() {
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_capabilities(1 << CAP_BPF), ["CAP_PERFMON"]);
        assert_eq!(missing_capabilities(1 << CAP_PERFMON), ["CAP_BPF"]);
    }

    #[test]
    fn finds_errno_in_a_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::from_raw_os_error(nix::libc::EPERM));
        assert_eq!(errno_in_chain(&error), Some(nix::libc::EPERM));
        let classified = classify("loading", &error, SamplerError::Load);
        assert!(matches!(
            classified,
            SamplerError::PermissionDenied {
                operation: "loading",
                ..
            }
        ));

        let other = Outer(std::io::Error::from_raw_os_error(nix::libc::EINVAL));
        match classify("loading", &other, SamplerError::Load) {
            SamplerError::Load(message) => assert!(message.starts_with("outer: "), "{message}"),
            error => panic!("{error:?}"),
        }
    }
}
