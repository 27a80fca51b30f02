//! The grpc-timeout codec of ctxcore-http: `parse` never panics and accepts
//! only 1-8 ASCII digits and a unit; `encode` → `parse` round trips never
//! give more time than was left, and lose less than one unit.
#![no_main]

use core::time::Duration;
use ctxcore_http::grpc_timeout::{encode, parse, parse_bytes, parse_millis, MAX, MAX_DIGITS};
use libfuzzer_sys::fuzz_target;

fn unit_nanos(unit: u8) -> u64 {
    match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        other => panic!("encode wrote unit {other:?}"),
    }
}

fn check_round_trip(d: Duration) {
    let e = encode(d);
    let bytes = e.as_bytes();
    assert!(bytes.len() >= 2 && bytes.len() <= MAX_DIGITS + 1, "{e:?}");
    let back = parse(e.as_str()).unwrap_or_else(|err| panic!("{e:?} does not parse: {err}"));
    assert_eq!(back, e.duration());
    if d.is_zero() {
        assert_eq!(e.as_str(), "1n");
    } else if d >= MAX {
        assert_eq!(e.as_str(), "99999999H");
    } else {
        let unit = Duration::from_nanos(unit_nanos(bytes[bytes.len() - 1]));
        assert!(back <= d, "{d:?} -> {e} -> {back:?}: more time than was left");
        assert!(d - back < unit, "{d:?} -> {e} -> {back:?}: lost a whole unit");
    }
}

fuzz_target!(|data: &[u8]| {
    // Parse: strict, panic-free.
    if let Ok(d) = parse_bytes(data) {
        assert!(data.len() >= 2 && data.len() <= MAX_DIGITS + 1);
        assert!(data[..data.len() - 1].iter().all(u8::is_ascii_digit));
        assert!(d <= MAX);
        check_round_trip(d);
    }
    if let Ok(s) = core::str::from_utf8(data) {
        assert_eq!(parse(s), parse_bytes(data));
    }
    if let Ok(d) = parse_millis(data) {
        assert!(data.iter().all(u8::is_ascii_digit) && !data.is_empty() && data.len() <= 10);
        assert_eq!(u128::from(d.as_millis() as u64), d.as_millis());
    }
    // Encode → parse, from a duration built from the input.
    if data.len() >= 12 {
        let secs = u64::from_le_bytes(data[..8].try_into().unwrap());
        let nanos = u32::from_le_bytes(data[8..12].try_into().unwrap()) % 1_000_000_000;
        // Spread over every magnitude: shift by the 13th byte.
        let shift = data.get(12).map_or(0, |b| u32::from(*b % 64));
        check_round_trip(Duration::new(secs >> shift, nanos));
        check_round_trip(Duration::from_nanos(secs >> shift));
    }
});
