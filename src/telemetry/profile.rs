//! `/debug/pprof/profile?seconds=N`: a CPU profile of the whole process,
//! sampled at 99 Hz for N seconds, as pprof protobuf (for `go tool pprof` or
//! `pprof`) or, with `format=svg`, as a flamegraph. Nothing samples while no
//! profile is being taken.

use std::time::Duration;

use pprof::protos::Message;

/// Longest profile one request may ask for.
pub const MAX_SECONDS: u64 = 120;

/// Output format of a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// pprof's gzip-less protobuf `Profile`.
    Protobuf,
    /// An SVG flamegraph.
    Svg,
}

/// Profile parameters from a query string (`seconds=5&format=svg`).
pub fn parse_query(query: &str) -> Result<(Duration, Format), String> {
    let mut seconds = 30;
    let mut format = Format::Protobuf;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "seconds" => {
                seconds = v
                    .parse()
                    .map_err(|_| format!("seconds must be a whole number, not `{v}`"))?;
                if seconds == 0 || seconds > MAX_SECONDS {
                    return Err(format!("seconds must be between 1 and {MAX_SECONDS}"));
                }
            }
            "format" => {
                format = match v {
                    "svg" | "flamegraph" => Format::Svg,
                    "pb" | "proto" | "protobuf" => Format::Protobuf,
                    other => return Err(format!("format `{other}` is not svg or pb")),
                }
            }
            _ => {}
        }
    }
    Ok((Duration::from_secs(seconds), format))
}

/// Samples the process for `duration` and renders the profile.
pub fn cpu_profile(duration: Duration, format: Format) -> Result<Vec<u8>, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(99)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| format!("cannot start the profiler (is another profile running?): {e}"))?;
    std::thread::sleep(duration);
    let report = guard
        .report()
        .build()
        .map_err(|e| format!("cannot build the profile: {e}"))?;
    let mut body = Vec::new();
    match format {
        Format::Svg if report.data.is_empty() => {
            return Err(format!(
                "no CPU samples in {duration:?}: the process was idle; profile while it works"
            ))
        }
        Format::Svg => report
            .flamegraph(&mut body)
            .map_err(|e| format!("cannot draw the flamegraph: {e}"))?,
        Format::Protobuf => report
            .pprof()
            .map_err(|e| format!("cannot encode the profile: {e}"))?
            .encode(&mut body)
            .map_err(|e| format!("cannot encode the profile: {e}"))?,
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seconds_and_format() {
        assert_eq!(
            parse_query(""),
            Ok((Duration::from_secs(30), Format::Protobuf))
        );
        assert_eq!(
            parse_query("seconds=2&format=svg"),
            Ok((Duration::from_secs(2), Format::Svg))
        );
        assert!(parse_query("seconds=0").is_err());
        assert!(parse_query("seconds=x").is_err());
        assert!(parse_query("format=png").is_err());
    }

    #[test]
    fn profiles_this_process() {
        let spin = std::thread::spawn(|| {
            let start = std::time::Instant::now();
            let mut x = 0u64;
            while start.elapsed() < Duration::from_millis(1200) {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
            x
        });
        let body = cpu_profile(Duration::from_secs(1), Format::Protobuf).unwrap();
        let _ = spin.join();
        let profile = pprof::protos::Profile::decode(body.as_slice()).unwrap();
        assert!(!profile.sample.is_empty(), "a busy thread was sampled");
    }
}
